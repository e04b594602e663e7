"""Triton's metric names, read at scrape time from the statistics each version keeps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelport.dataplane.observers.statistics import failure_reason
from modelport.errors import DeadlineExceeded, InferenceFailed, InvalidRequest, Unavailable
from modelport.observability.metrics import Metrics
from modelport.observability.statistics import ModelStatistics
from modelport.observability.triton_metrics import HostStats, LoadedVersion, TritonMetrics

MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    4000000 kB\n"


def _proc(root: Path, busy: int, idle: int, iowait: int = 0) -> Path:
    # user nice system idle iowait irq softirq steal guest guest_nice
    (root / "stat").write_text(
        f"cpu  {busy} 0 0 {idle} {iowait} 0 0 0 0 0\ncpu0 {busy} 0 0 {idle} 0 0 0 0 0 0\n"
    )
    (root / "meminfo").write_text(MEMINFO)
    return root


def _stats() -> ModelStatistics:
    stats = ModelStatistics()
    # Two requests of 1 and 3 rows, batched into one execution.
    stats.record_success(2_000_500, 100_000, 10_000, 1_000_000, 20_999, 1)
    stats.record_success(3_000_000, 200_000, 20_000, 1_000_000, 30_000, 3)
    stats.record_execution(4, 10_000, 1_000_000, 20_000)
    stats.record_cache_hit(5_000)
    stats.record_cache_miss(7_000)
    stats.record_failure(1_000, "BACKEND")
    stats.record_failure(1_000, "REJECTED")
    stats.record_failure(1_000, "REJECTED")
    return stats


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by name and labels (the parser's ``_total`` on counters taken off)."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            name = s.name.removesuffix("_total") if family.type == "counter" else s.name
            out[(name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _key(name: str, model: str = "fraud", **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted({"model": model, "version": "2", **labels}.items())))


@pytest.fixture
def host(tmp_path: Path) -> HostStats:
    return HostStats(_proc(tmp_path, busy=300, idle=700))


def test_per_version_series_carry_tritons_names_labels_and_units(host: HostStats) -> None:
    versions = [LoadedVersion("fraud", "2", _stats(), pending=3, cached=True)]
    text = TritonMetrics(lambda: versions, host).render()
    got = _samples(text)
    assert got[_key("nv_inference_request_success")] == 3  # cache hit included
    assert got[_key("nv_inference_count")] == 4  # rows, cache hit excluded
    assert got[_key("nv_inference_exec_count")] == 1
    assert got[_key("nv_inference_pending_request_count")] == 3
    # Cumulative microseconds, rounded down: (2_000_500 + 3_000_000 + 5_000) ns.
    assert got[_key("nv_inference_request_duration_us")] == 5005
    assert got[_key("nv_inference_queue_duration_us")] == 300
    assert got[_key("nv_inference_compute_input_duration_us")] == 30
    assert got[_key("nv_inference_compute_infer_duration_us")] == 2000
    assert got[_key("nv_inference_compute_output_duration_us")] == 50
    assert got[_key("nv_cache_num_hits_per_model")] == 1
    assert got[_key("nv_cache_num_misses_per_model")] == 1
    assert got[_key("nv_cache_hit_duration_per_model")] == 5
    assert got[_key("nv_cache_miss_duration_per_model")] == 7
    failures = {r: got[_key("nv_inference_request_failure", reason=r)] for r in _REASONS}
    assert failures == {"REJECTED": 2, "CANCELED": 0, "BACKEND": 1, "OTHER": 0}


_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


def test_counters_keep_tritons_names_without_a_total_suffix(host: HostStats) -> None:
    text = TritonMetrics(lambda: [LoadedVersion("m", "1", ModelStatistics())], host).render()
    lines = text.decode().splitlines()
    assert "# TYPE nv_inference_request_success counter" in lines
    assert "# TYPE nv_inference_pending_request_count gauge" in lines
    assert 'nv_inference_request_success{model="m",version="1"} 0' in lines
    assert re.search(r"^\S+_total[{ ]", text.decode(), re.MULTILINE) is None


def test_cache_series_are_shown_only_for_versions_with_a_cache(host: HostStats) -> None:
    versions = [
        LoadedVersion("plain", "1", ModelStatistics()),
        LoadedVersion("cached", "1", ModelStatistics(), cached=True),
    ]
    text = TritonMetrics(lambda: versions, host).render().decode()
    hits = [line for line in text.splitlines() if line.startswith("nv_cache_num_hits_per_model{")]
    assert hits == ['nv_cache_num_hits_per_model{model="cached",version="1"} 0']


def test_only_the_models_a_caller_may_see_are_shown(host: HostStats) -> None:
    versions = [LoadedVersion(n, "1", ModelStatistics()) for n in ("fraud-1", "fraud-2")]
    text = TritonMetrics(lambda: versions, host).render(lambda n: n == "fraud-1").decode()
    assert 'model="fraud-1"' in text and "fraud-2" not in text
    # The host's series concern no model: every caller sees them.
    assert "nv_cpu_utilization " in text


def test_label_values_are_escaped(host: HostStats) -> None:
    versions = [LoadedVersion('we"ird\\', "1", ModelStatistics())]
    got = _samples(TritonMetrics(lambda: versions, host).render())
    assert got[("nv_inference_count", (("model", 'we"ird\\'), ("version", "1")))] == 0


def test_metrics_render_appends_the_nv_series_and_filters_them_too(host: HostStats) -> None:
    metrics = Metrics()
    metrics.for_model("fraud-1", "1", "http").requests.inc()
    versions = [LoadedVersion(n, "1", ModelStatistics()) for n in ("fraud-1", "fraud-2")]
    metrics.add_exposition(TritonMetrics(lambda: versions, host).render)
    everything = metrics.render().decode()
    assert "modelport_inference_requests_total" in everything
    assert 'nv_inference_count{model="fraud-2",version="1"} 0' in everything
    some = metrics.render(lambda n: n == "fraud-1").decode()
    assert 'nv_inference_count{model="fraud-1",version="1"} 0' in some
    assert "fraud-2" not in some
    # The whole exposition still parses.
    assert any(f.name == "nv_inference_count" for f in text_string_to_metric_families(some))


def test_cpu_utilization_is_over_the_time_since_the_last_scrape(tmp_path: Path) -> None:
    host = HostStats(_proc(tmp_path, busy=300, idle=600, iowait=100))
    assert host.cpu_utilization() == pytest.approx(0.3)  # since boot
    _proc(tmp_path, busy=400, idle=700, iowait=100)  # 100 busy, 100 idle since then
    assert host.cpu_utilization() == pytest.approx(0.5)
    assert host.cpu_utilization() == 0.0  # no time passed


def test_memory_is_total_and_total_less_available(tmp_path: Path) -> None:
    host = HostStats(_proc(tmp_path, busy=1, idle=1))
    assert host.memory() == (16_000_000 * 1024, 12_000_000 * 1024)
    got = _samples(TritonMetrics(list, host).render())
    assert got[("nv_cpu_memory_total_bytes", ())] == 16_000_000 * 1024
    assert got[("nv_cpu_memory_used_bytes", ())] == 12_000_000 * 1024


def test_without_proc_the_host_series_are_left_out(tmp_path: Path) -> None:
    text = TritonMetrics(list, HostStats(tmp_path / "missing")).render().decode()
    assert "nv_cpu" not in text
    assert "# TYPE nv_inference_count counter" in text


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (None, "CANCELED"),
        (InferenceFailed("model raised"), "BACKEND"),
        (Unavailable("queue full"), "REJECTED"),
        (DeadlineExceeded("timed out in queue"), "REJECTED"),
        (InvalidRequest("odd"), "OTHER"),
    ],
)
def test_a_failure_gets_tritons_reason(error: Exception | None, reason: str) -> None:
    assert failure_reason(error) == reason  # type: ignore[arg-type]
