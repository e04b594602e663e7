"""A node of several front-end workers reports its metrics and statistics as one server."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import ProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from modelport.observability.merge import merge_expositions, merge_statistics
from modelport.observability.metrics import Metrics
from modelport.observability.statistics import ModelStatistics
from modelport.observability.triton_metrics import HostStats, LoadedVersion, TritonMetrics

Key = tuple[str, tuple[tuple[str, str], ...]]


def _samples(text: bytes) -> dict[Key, float]:
    """Every sample by its name (as the parser gives it) and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def _key(name: str, **labels: str) -> Key:
    return (name, tuple(sorted(labels.items())))


def _families(text: bytes) -> list[str]:
    return [f.name for f in text_string_to_metric_families(text.decode())]


def _host(root: Path, used_kib: int) -> HostStats:
    root.mkdir()
    (root / "stat").write_text("cpu  300 0 0 700 0 0 0 0 0 0\n")
    (root / "meminfo").write_text(
        f"MemTotal:       16000000 kB\nMemAvailable:    {16000000 - used_kib} kB\n"
    )
    return HostStats(root)


def _process(root: Path, start_ticks: int, rss_pages: int, cpu_ticks: int, fds: int) -> str:
    """A /proc with one process, as ProcessCollector reads it."""
    pid = root / "7"
    (pid / "fd").mkdir(parents=True)
    (root / "stat").write_text("cpu  1 0 0 1 0 0 0 0 0 0\nbtime 1700000000\n")
    # After "(comm)": state is field 0, utime 11, stime 12, starttime 19, vsize 20, rss 21.
    fields = ["S"] + ["0"] * 21
    fields[11], fields[12] = str(cpu_ticks), str(cpu_ticks)
    fields[19], fields[20], fields[21] = str(start_ticks), "1000000", str(rss_pages)
    (pid / "stat").write_text("7 (modelport) " + " ".join(fields) + "\n")
    (pid / "limits").write_text("Max open files            1024                 4096      files\n")
    for fd in range(fds):
        (pid / "fd" / str(fd)).touch()
    return str(root)


def _worker(
    tmp_path: Path,
    n: int,
    requests: dict[tuple[str, str], int],
    latencies: tuple[float, ...] = (),
    instances: int = 1,
    loaded: int = 2,
) -> Metrics:
    """One worker's metrics after the traffic given: requests by (model, protocol)."""
    metrics = Metrics()
    ProcessCollector(
        pid=lambda: 7,
        proc=_process(tmp_path / f"proc{n}", 100 * n, 1000 * n, 50 * n, n),
        registry=metrics.registry,
    )
    versions: dict[str, LoadedVersion] = {}
    for (model, protocol), count in requests.items():
        series = metrics.for_model(model, "1", protocol)
        version = versions.setdefault(model, LoadedVersion(model, "1", ModelStatistics(), n))
        for _ in range(count):
            series.requests.inc()
            version.stats.record_success(1_000_000, 0, 0, 1_000_000, 0, 1)
        for seconds in latencies:
            series.request_duration.observe(seconds)
    metrics.models_loaded.set(loaded)
    metrics.security_events.labels("security.rate_spike").inc(n)
    host = _host(tmp_path / f"host{n}", 1000 * n)
    metrics.add_exposition(TritonMetrics(lambda: list(versions.values()), host).render)
    # As the autoscaler writes it: the instances this worker runs.
    lines = "".join(
        f'modelport_instances{{model="{m}",version="1"}} {instances}\n' for m in sorted(versions)
    )
    metrics.add_exposition(
        lambda _visible: (
            "# HELP modelport_instances Instances a model version runs now.\n"
            f"# TYPE modelport_instances gauge\n{lines}"
        ).encode()
    )
    return metrics


@pytest.fixture
def texts(tmp_path: Path) -> list[bytes]:
    workers = [
        _worker(tmp_path, 1, {("fraud", "http"): 3, ("churn", "grpc"): 1}, (0.0002, 0.03)),
        _worker(tmp_path, 2, {("fraud", "http"): 4, ("fraud", "grpc"): 2}, (0.0002, 7.0)),
        # Still loading "churn".
        _worker(tmp_path, 3, {("fraud", "http"): 5}, (0.5,), instances=2, loaded=1),
    ]
    return [w.render() for w in workers]


def test_counters_are_the_sum_of_every_workers(texts: list[bytes]) -> None:
    got = _samples(merge_expositions(texts))
    requests = "modelport_inference_requests_total"
    assert got[_key(requests, model="fraud", version="1", protocol="http")] == 12
    # Series that only some workers have still appear.
    assert got[_key(requests, model="fraud", version="1", protocol="grpc")] == 2
    assert got[_key(requests, model="churn", version="1", protocol="grpc")] == 1
    assert got[_key("modelport_security_events_total", kind="security.rate_spike")] == 6
    assert got[_key("process_cpu_seconds_total")] == pytest.approx(
        sum(_samples(t)[_key("process_cpu_seconds_total")] for t in texts)
    )


def test_histograms_merge_bucket_by_bucket_and_stay_cumulative(texts: list[bytes]) -> None:
    merged = merge_expositions(texts)
    name = "modelport_request_duration_seconds"
    labels = {"model": "fraud", "version": "1", "protocol": "http"}
    family = next(f for f in text_string_to_metric_families(merged.decode()) if f.name == name)
    buckets = [
        (s.labels["le"], s.value)
        for s in family.samples
        if s.name == name + "_bucket" and s.labels.items() > labels.items()
    ]
    # 0.0002 twice, 0.03, 7.0 and 0.5: one observation each worker in those buckets.
    counts = dict(buckets)
    assert counts["0.00025"] == 2
    assert counts["0.025"] == 2 and counts["0.05"] == 3
    assert counts["0.5"] == 4 and counts["5.0"] == 4 and counts["10.0"] == 5
    values = [v for _, v in buckets]
    assert values == sorted(values)
    got = _samples(merged)
    assert counts["+Inf"] == got[_key(name + "_count", **labels)] == 5
    assert got[_key(name + "_sum", **labels)] == pytest.approx(0.0002 * 2 + 0.03 + 7.0 + 0.5)


def test_created_is_the_earliest_workers(texts: list[bytes]) -> None:
    key = _key("modelport_inference_requests_created", model="fraud", version="1", protocol="http")
    assert _samples(merge_expositions(texts))[key] == min(_samples(t)[key] for t in texts)


def test_gauges_of_a_share_are_summed_and_node_wide_facts_are_not(texts: list[bytes]) -> None:
    got = _samples(merge_expositions(texts))
    each = [_samples(t) for t in texts]
    fraud = {"model": "fraud", "version": "1"}
    assert got[_key("modelport_instances", **fraud)] == 1 + 1 + 2
    assert got[_key("nv_inference_pending_request_count", **fraud)] == 1 + 2 + 3
    for summed in ("process_resident_memory_bytes", "process_open_fds", "process_max_fds"):
        assert got[_key(summed)] == sum(s[_key(summed)] for s in each)
    # Every worker loads the same models: the largest count is the node's.
    assert got[_key("modelport_models_loaded")] == 2
    assert got[_key("process_start_time_seconds")] == min(
        s[_key("process_start_time_seconds")] for s in each
    )
    # The host's memory is one fact every worker reads.
    assert got[_key("nv_cpu_memory_used_bytes")] == 3000 * 1024
    assert got[_key("nv_cpu_memory_total_bytes")] == 16000000 * 1024


def test_triton_counters_are_summed_and_keep_their_names_without_total(
    texts: list[bytes],
) -> None:
    merged = merge_expositions(texts)
    lines = merged.decode().splitlines()
    assert "# TYPE nv_inference_request_success counter" in lines
    assert 'nv_inference_request_success{model="fraud",version="1"} 14.0' in lines
    assert 'nv_inference_count{model="churn",version="1"} 1.0' in lines
    names = {line.split(" ")[0].split("{")[0] for line in lines if line.startswith("nv_")}
    assert "nv_inference_count" in names
    assert not [name for name in names if name.endswith("_total")]
    # The exposition's own counters keep theirs.
    assert "# TYPE modelport_inference_requests_total counter" in lines
    failures = _samples(merged)[
        _key("nv_inference_request_failure_total", model="fraud", version="1", reason="BACKEND")
    ]
    assert failures == 0


def test_hidden_models_are_left_out_and_server_wide_series_stay(texts: list[bytes]) -> None:
    merged = merge_expositions(texts, visible=lambda model: model == "churn").decode()
    assert 'model="churn"' in merged
    assert "fraud" not in merged
    assert "modelport_models_loaded 2.0" in merged
    assert 'modelport_security_events_total{kind="security.rate_spike"} 6.0' in merged
    # A family whose every series is hidden still says what it is.
    assert "# TYPE modelport_inference_failures_total counter" in merged


def test_a_family_of_one_worker_only_appears_where_that_worker_puts_it(tmp_path: Path) -> None:
    quiet = _worker(tmp_path, 1, {("fraud", "http"): 1})
    failing = _worker(tmp_path, 2, {("fraud", "http"): 1})
    failing.failures.labels("fraud", "1", "http", "invalid").inc()
    merged = merge_expositions([quiet.render(), failing.render()])
    reason = {"model": "fraud", "version": "1", "protocol": "http", "reason": "invalid"}
    assert _samples(merged)[_key("modelport_inference_failures_total", **reason)] == 1
    # Only the failing worker has the failures' _created family, right after the failures.
    families = _families(merged)
    at = families.index("modelport_inference_failures")
    assert families[at + 1] == "modelport_inference_failures_created"
    assert families == _families(failing.render())


def test_one_workers_text_merges_into_the_same_exposition(texts: list[bytes]) -> None:
    for text in texts:
        merged = merge_expositions([text])
        assert _samples(merged) == _samples(text)
        assert _families(merged) == _families(text)


def test_the_registrys_text_comes_back_byte_for_byte() -> None:
    metrics = Metrics()
    series = metrics.for_model('we"ird\\', "1", "http")
    series.requests.inc(3)
    series.request_duration.observe(12345.678)
    metrics.load_duration.labels("fraud").observe(0.3)
    text = metrics.render()
    assert merge_expositions([text]) == text


def test_no_worker_gives_an_empty_exposition() -> None:
    assert merge_expositions([]) == b""


def _stats(requests: int, batch_sizes: tuple[int, ...], failures: int = 0) -> ModelStatistics:
    stats = ModelStatistics()
    for _ in range(requests):
        stats.record_success(2_000, 100, 10, 1_000, 20, 1)
    for size in batch_sizes:
        stats.record_execution(size, 10, 1_000, 20)
    for _ in range(failures):
        stats.record_failure(500, "BACKEND")
    return stats


def test_statistics_sum_every_count_and_duration_per_version() -> None:
    one = _stats(3, (1, 4))
    two = _stats(2, (4, 8), failures=1)
    one.last_inference_ms, two.last_inference_ms = 1_000, 2_000
    workers = [
        [one.to_json("fraud", "2"), _stats(1, (1,)).to_json("fraud", "10")],
        [two.to_json("fraud", "2"), _stats(5, ()).to_json("churn", "1")],
    ]
    before = copy.deepcopy(workers)
    merged = merge_statistics(workers)
    assert workers == before
    assert [(e["name"], e["version"]) for e in merged] == [
        ("churn", "1"),
        ("fraud", "2"),
        ("fraud", "10"),
    ]
    fraud = merged[1]
    assert fraud["last_inference"] == 2_000
    assert fraud["inference_count"] == 5
    assert fraud["execution_count"] == 4
    stats = fraud["inference_stats"]
    assert stats["success"] == {"count": 5, "ns": 10_000}
    assert stats["fail"] == {"count": 1, "ns": 500}
    assert stats["compute_infer"] == {"count": 5, "ns": 5_000}
    assert [b["batch_size"] for b in fraud["batch_stats"]] == [1, 4, 8]
    four = fraud["batch_stats"][1]
    assert four["compute_infer"] == {"count": 2, "ns": 2_000}
    assert fraud["memory_usage"] == []
    # A version on one worker only is as that worker reports it.
    assert merged[0] == workers[1][1]


def test_statistics_merge_memory_and_response_entries_by_their_key() -> None:
    def entry(byte_size: int, responses: int) -> dict[str, Any]:
        found = _stats(1, ()).to_json("llm", "1")
        found["memory_usage"] = [
            {"type": "CPU", "id": 0, "byte_size": byte_size},
            {"type": "GPU", "id": byte_size, "byte_size": 1},
        ]
        found["response_stats"] = {"0": {"success": {"count": responses, "ns": 10}}}
        return found

    merged = merge_statistics([[entry(100, 1)], [entry(200, 3)]])[0]
    assert merged["memory_usage"] == [
        {"type": "CPU", "id": 0, "byte_size": 300},
        {"type": "GPU", "id": 100, "byte_size": 1},
        {"type": "GPU", "id": 200, "byte_size": 1},
    ]
    assert merged["response_stats"] == {"0": {"success": {"count": 4, "ns": 20}}}
