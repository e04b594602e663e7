"""Loading stays inside the version directory; a load request's config cannot widen loading.

The pieces one by one (the file rule, the override rule, reasons without
paths), then through the registry over a real repository; the transports'
side is in tests/integration/test_repository_confinement.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from modelport.config.model import ModelConfig, ModelportOptions, parse_model_config
from modelport.controlplane.registry import Registry
from modelport.controlplane.repository.config_files import read_model_config
from modelport.controlplane.repository.layout import scan_model
from modelport.controlplane.repository.override import (
    TUNABLE,
    TUNABLE_MODELPORT,
    WHY,
    apply_override,
)
from modelport.controlplane.repository.reasons import public_reason
from modelport.dataplane.runtime.files import check_version_dir, model_file, version_file
from modelport.errors import InvalidRequest, ModelLoadError, ModelNotReady
from modelport.observability.metrics import Metrics
from tests.integration.models import add_sub_model, identity_model


def _write(path: Path, model: onnx.ModelProto) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ----------------------------------------------------------- the file rule


@pytest.mark.parametrize(
    "name", ["../x", "a/../../x", "/etc/passwd", "..", "a\\..\\..\\x", "x\0y", ""]
)
def test_version_file_refuses_names_that_leave_the_directory(tmp_path: Path, name: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        version_file(tmp_path, name)
    assert info.value.message.startswith("default_model_filename must name a file inside")
    if name.strip("/."):
        assert name not in info.value.message


@pytest.mark.parametrize(
    ("name", "rel"), [("model.onnx", "model.onnx"), ("sub/./m.pt", "sub/m.pt")]
)
def test_version_file_keeps_names_inside(tmp_path: Path, name: str, rel: str) -> None:
    assert version_file(tmp_path, name) == tmp_path / rel


def test_links_out_of_the_version_directory_are_refused(tmp_path: Path) -> None:
    model = tmp_path / "repo" / "m"
    version = model / "1"
    version.mkdir(parents=True)
    (model / "elsewhere.onnx").write_bytes(b"x")
    (version / "real.onnx").write_bytes(b"x")
    (version / "model.onnx").symlink_to("real.onnx")
    (version / "inner").mkdir()
    (version / "inner" / "up").symlink_to("..")  # still inside
    check_version_dir(version, ModelConfig())  # links that stay inside are fine

    (version / "weights.bin").symlink_to("../elsewhere.onnx")
    with pytest.raises(ModelLoadError, match=r"^weights\.bin: a link leading out") as info:
        check_version_dir(version, ModelConfig())
    assert "elsewhere" not in info.value.message
    (version / "weights.bin").unlink()

    (version / "sub").symlink_to("/etc")  # a directory link counts as much as a file's
    with pytest.raises(ModelLoadError, match=r"^sub: a link leading out"):
        check_version_dir(version, ModelConfig())
    (version / "sub").unlink()

    (version / "loop").symlink_to("loop")
    with pytest.raises(ModelLoadError, match="loop"):
        check_version_dir(version, ModelConfig())
    (version / "loop").unlink()

    for name in ("../elsewhere.onnx", "/etc/passwd", "/no/such/file"):
        config = ModelConfig(default_model_filename=name)
        with pytest.raises(ModelLoadError, match=r"^default_model_filename must name"):
            check_version_dir(version, config)
    config = ModelConfig(cc_model_filenames={"8.0": "../elsewhere.onnx"})
    with pytest.raises(ModelLoadError, match=r"^cc_model_filenames\.8\.0 must name"):
        check_version_dir(version, config)


def test_model_file_refuses_default_model_filename_outside(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "model.skops").write_bytes(b"x")
    config = ModelConfig(default_model_filename="../model.skops")
    with pytest.raises(ModelLoadError, match="must name a file inside"):
        model_file(tmp_path / "1", config, ["model.skops"])


# --------------------------------------------------------- the override rule


def test_every_field_the_rule_names_is_a_model_config_field() -> None:
    for name in TUNABLE:
        assert name in ModelConfig.model_fields, name
    for name in TUNABLE_MODELPORT:
        assert name in ModelportOptions.model_fields, name
    for path in WHY:
        head, _, rest = path.partition(".")
        if head == "label_filename":
            continue
        assert head in ModelConfig.model_fields, path
        assert head not in TUNABLE or rest, path
        if head == "modelport":
            assert rest in ModelportOptions.model_fields, path
            assert rest not in TUNABLE_MODELPORT, path


OWN = {
    "backend": "sklearn",
    "modelport": {
        "allow_unsafe_pickle": True,
        "residency": ["ae"],
        "payload_log": {"enabled": True, "redact_fields": ["card"], "seal": True},
        "rate_limit": {"rate": 10, "burst": 5},
    },
    "parameters": {"tenant": {"string_value": "acme"}, "n_jobs": {"string_value": "1"}},
    "output": [
        {"name": "label", "data_type": "TYPE_INT64", "dims": [1], "label_filename": "l.txt"}
    ],
    "instance_group": [{"kind": "KIND_GPU", "gpus": [0], "count": 2}],
}
UNREDACTED = {"enabled": True, "sample": 1.0, "redact_fields": [], "include_outputs": True}


def _parse(data: dict[str, Any]) -> ModelConfig:
    return parse_model_config(data, "test")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"backend": "python"}, "backend"),
        ({"platform": "onnxruntime_onnx"}, "platform"),
        ({"runtime": "x.so"}, "runtime"),
        ({"default_model_filename": "model.pkl"}, "default_model_filename"),
        ({"cc_model_filenames": {"8.0": "m.onnx"}}, "cc_model_filenames"),
        ({"model_repository_agents": {"agents": []}}, "model_repository_agents"),
        ({"modelport": {"allow_unsafe_pickle": False}}, "modelport.allow_unsafe_pickle"),
        ({"modelport": {"residency": []}}, "modelport.residency"),
        ({"parameters": {"tenant": {"string_value": "other"}}}, "parameters.tenant"),
        ({"modelport": {"payload_log": UNREDACTED}}, "modelport.payload_log"),
        ({"modelport": {"payload_log": None}}, "modelport.payload_log"),
        (
            {"modelport": {"payload_log": {"enabled": True, "redact_fields": ["card"]}}},
            "modelport.payload_log",  # seal: false
        ),
        ({"modelport": {"rate_limit": None}}, "modelport.rate_limit"),
        ({"modelport": {"instance_process": True}}, "modelport.instance_process"),
        ({"modelport": {"method": "transform"}}, "modelport.method"),
        ({"modelport": {"description": "x"}}, "modelport.description"),
        ({"metric_tags": {"model": "other"}}, "metric_tags"),
        ({"sequence_batching": {}}, "sequence_batching"),
        ({"ensemble_scheduling": {"step": []}}, "ensemble_scheduling"),
        ({"model_operations": {"op_library_filename": ["/tmp/x.so"]}}, "model_operations"),
        ({"batch_input": [{"kind": "BATCH_ELEMENT_COUNT"}]}, "batch_input"),
        (
            {
                "output": [
                    {
                        "name": "label",
                        "data_type": "TYPE_INT64",
                        "dims": [1],
                        "label_filename": "/etc/passwd",
                    }
                ]
            },
            "output[0].label_filename",
        ),
        ({"instance_group": [{"kind": "KIND_GPU", "gpus": [1]}]}, "instance_group[0]"),
        ({"instance_group": [{"kind": "KIND_MODEL"}]}, "instance_group[0]"),
        ({"instance_group": [{"kind": "KIND_CPU", "host_policy": "x"}]}, "instance_group[0]"),
        ({"instance_group": [{"count": 256}] * 4}, "instance_group"),
    ],
)
def test_an_override_may_change_only_serving_knobs(override: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        apply_override(_parse(override), _parse(OWN), max_instances=8)
    message = info.value.message
    assert f"{field!r} cannot be set by a load request" in message
    assert "needs the repository's own config" in message


def test_an_override_may_tune_serving() -> None:
    tuned = {
        "max_batch_size": 8,
        "dynamic_batching": {"max_queue_delay_microseconds": 100},
        "version_policy": {"all": {}},
        "optimization": {"graph": {"level": 1}},
        "response_cache": {"enable": True},
        "model_warmup": [{"name": "w", "batch_size": 1, "inputs": {}}],
        "parameters": {"intra_op_thread_count": {"string_value": "2"}},
        "output": [{"name": "label", "data_type": "TYPE_INT64", "dims": [-1]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 3}, {"kind": "KIND_GPU", "gpus": [0]}],
        "modelport": {
            "batching": False,
            "batch_key": "customer",
            "inline_max_us": 0,
            "inline_busy_max_us": 0,
            "pin_instances": False,
        },
    }
    merged = apply_override(_parse(tuned), _parse(OWN), max_instances=4)
    assert merged.max_batch_size == 8
    assert merged.version_policy.all == {}
    assert merged.output[0].dims == [-1]
    assert merged.output[0].label_filename == "l.txt"  # left out, still the repository's
    assert [g.count for g in merged.instance_group] == [3, 1]
    assert merged.modelport.batch_key == "customer"
    assert merged.modelport.pin_instances is False
    assert merged.modelport.payload_log == _parse(OWN).modelport.payload_log
    assert merged.modelport.rate_limit == _parse(OWN).modelport.rate_limit
    # The repository's config may ask for more instances than a request may.
    apply_override(_parse({"instance_group": [{"kind": "KIND_CPU", "count": 2}]}), _parse(OWN))


def test_protected_fields_come_from_the_repository() -> None:
    requested = _parse(
        {
            "max_batch_size": 4,
            "backend": "sklearn",  # repeating the repository's value is fine
            "modelport": {"batching": False, "allow_unsafe_pickle": True},
            "parameters": {"n_jobs": {"string_value": "2"}},
        }
    )
    merged = apply_override(requested, _parse(OWN))
    assert merged.max_batch_size == 4
    assert merged.backend == "sklearn"
    assert merged.modelport.batching is False
    assert merged.modelport.allow_unsafe_pickle is True
    assert merged.modelport.residency == ["ae"]
    assert merged.parameter("tenant") == "acme"  # left out, still the repository's
    assert merged.parameter("n_jobs") == "2"
    # Without the repository's settings, nothing of them appears.
    bare = apply_override(_parse({"max_batch_size": 4}), _parse({}))
    assert bare.modelport.allow_unsafe_pickle is False
    assert bare.parameter("tenant") is None
    assert bare.backend == ""


def test_backend_the_repository_leads_to_may_be_repeated(tmp_path: Path) -> None:
    _write(tmp_path / "m" / "1" / "model.onnx", identity_model("FP32"))
    source = scan_model(tmp_path, "m")
    assert source is not None
    shown = {"backend": "onnxruntime", "platform": "onnxruntime_onnx", "max_batch_size": 2}
    assert read_model_config(source, shown).max_batch_size == 2
    with pytest.raises(InvalidRequest, match="'backend'"):
        read_model_config(source, {"backend": "openvino"})


def test_an_override_inherits_the_repository_s_pickle_switch(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.yaml").write_text("modelport: {allow_unsafe_pickle: true}\n")
    source = scan_model(tmp_path, "m")
    assert source is not None
    assert read_model_config(source, {"max_batch_size": 2}).modelport.allow_unsafe_pickle


# --------------------------------------------------------------- reasons


def test_reasons_show_repository_paths_relative_and_others_by_name(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    text = (
        f"{repo}/m/1/model.onnx: Load model from {repo}/m/1/model.onnx failed; "
        "see /usr/lib/python3/site-packages/x.py (line 3), /etc/passwd. 1/2 and/or http://a/b"
    )
    shown = public_reason(text, repo)
    assert shown == (
        "m/1/model.onnx: Load model from m/1/model.onnx failed; "
        "see x.py (line 3), passwd. 1/2 and/or http://a/b"
    )
    linked = tmp_path / "link"
    linked.symlink_to(repo)
    assert public_reason(f"{repo}/m: x", linked) == "m: x"


# ------------------------------------------------------- through the registry


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    _write(root / "a" / "1" / "model.onnx", identity_model("FP32"))
    _write(root / "b" / "1" / "model.onnx", add_sub_model())
    return root


def test_a_load_override_cannot_serve_another_model_s_file(repo: Path) -> None:
    async def scenario() -> None:
        reg = Registry(repo, Metrics())
        await reg.start()
        for name in ("../../b/1/model.onnx", str(repo / "b" / "1" / "model.onnx")):
            with pytest.raises(InvalidRequest, match="'default_model_filename'"):
                await reg.load("a", {"default_model_filename": name})
        model = reg.acquire("a", None)
        assert [t.name for t in model.signature.inputs] == ["INPUT0"]  # still A's own
        assert all(not e.reason for e in reg.index(ready_only=False))
        with pytest.raises(InvalidRequest, match="'backend'"):
            await reg.load("a", {"backend": "python"})
        await reg.load("a", {"max_batch_size": 2})
        assert reg.acquire("a", None).config.max_batch_size == 2
        await reg.close()

    run(scenario())


def test_a_failed_reload_fails_the_load_call(repo: Path) -> None:
    async def scenario() -> None:
        reg = Registry(repo, Metrics())
        await reg.start()
        (repo / "a" / "1" / "model.onnx").unlink()
        (repo / "a" / "1" / "model.onnx").symlink_to(repo / "b" / "1" / "model.onnx")
        with pytest.raises(ModelLoadError, match="reload failed, previous copy serving") as info:
            await reg.load("a", None)
        assert "a link leading out of the version directory" in info.value.message
        assert str(repo) not in info.value.message
        assert reg.acquire("a", None).version == "1"  # the previous copy serves on
        await reg.unload("a")
        with pytest.raises(ModelLoadError, match=r"model\.onnx: a link leading out"):
            await reg.load("a", None)
        with pytest.raises(ModelNotReady) as not_ready:
            reg.acquire("a", None)
        assert str(repo) not in not_ready.value.message
        await reg.close()

    run(scenario())


def test_a_version_directory_linked_out_of_its_model_is_refused(tmp_path: Path) -> None:
    """``d/1 -> ../b/1`` would serve b's file under d's name, config and tenant."""
    store = tmp_path / "store" / "a1"
    _write(store / "model.onnx", identity_model("FP32"))
    repo = tmp_path / "repo"
    _write(repo / "b" / "1" / "model.onnx", add_sub_model())
    (repo / "d").mkdir(parents=True)
    os.symlink("../b/1", repo / "d" / "1")
    (repo / "e").mkdir(parents=True)
    os.symlink(store, repo / "e" / "1")
    # Links that stay inside the model keep working: a version linked to another.
    _write(repo / "k" / "2" / "model.onnx", identity_model("FP32"))
    os.symlink("2", repo / "k" / "1")
    (repo / "k" / "config.yaml").write_text("version_policy: {all: {}}\n")

    async def scenario() -> None:
        reg = Registry(repo, Metrics())
        await reg.start()
        for name in ("d", "e"):
            with pytest.raises(ModelNotReady):
                reg.acquire(name, None)
            why = " ".join(e.reason for e in reg.index(ready_only=False) if e.name == name)
            assert "1: the version directory is a link leading out of its model directory" in why
            assert "b/1" not in why and "store" not in why and str(tmp_path) not in why
            with pytest.raises(ModelLoadError, match="version directory is a link leading out"):
                await reg.load(name, None)
        assert reg.versions("k") == ["1", "2"]
        assert reg.acquire("k", "1").version == "1"
        await reg.close()

    run(scenario())


def test_a_model_directory_linked_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "f"
    _write(outside / "1" / "model.onnx", identity_model("FP32"))
    # The root may be a link (git-sync's ``repo -> .worktrees/<sha>``), and a
    # model directory may link to another place inside it.
    tree = tmp_path / ".worktrees" / "abc123"
    _write(tree / "a" / "1" / "model.onnx", identity_model("FP32"))
    _write(tree / ".store" / "g" / "1" / "model.onnx", identity_model("FP32"))
    os.symlink(".store/g", tree / "g")
    os.symlink(outside, tree / "f")
    repo = tmp_path / "repo"
    os.symlink(".worktrees/abc123", repo)

    async def scenario() -> None:
        reg = Registry(repo, Metrics())
        await reg.start()
        assert reg.acquire("a", None).version == "1"
        assert reg.acquire("g", None).version == "1"
        with pytest.raises(ModelNotReady) as info:
            reg.acquire("f", None)
        assert "f: the model directory is a link leading out of the repository" in str(info.value)
        assert "outside" not in str(info.value)
        with pytest.raises(ModelLoadError, match="link leading out of the repository") as load:
            await reg.load("f", None)
        assert "outside" not in load.value.message
        await reg.close()

    run(scenario())


def test_a_config_file_linked_out_of_its_model_is_refused(tmp_path: Path) -> None:
    """``d/config.pbtxt -> ../b/config.pbtxt`` would serve d under another model's config."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.pbtxt").write_text("max_batch_size: 8\n")
    repo = tmp_path / "repo"
    for name in ("b", "d", "e", "gone", "k"):
        _write(repo / name / "1" / "model.onnx", identity_model("FP32"))
    (repo / "b" / "config.pbtxt").write_text("max_batch_size: 4\n")
    os.symlink("../b/config.pbtxt", repo / "d" / "config.pbtxt")
    os.symlink(outside / "config.pbtxt", repo / "e" / "config.pbtxt")
    os.symlink(outside / "no-such-config.yaml", repo / "gone" / "config.yaml")
    # A link that stays inside the model directory is the model's own config.
    (repo / "k" / "configs").mkdir()
    (repo / "k" / "configs" / "current.pbtxt").write_text("max_batch_size: 2\n")
    os.symlink("configs/current.pbtxt", repo / "k" / "config.pbtxt")

    async def scenario() -> None:
        reg = Registry(repo, Metrics())
        await reg.start()
        assert reg.acquire("b", None).config.max_batch_size == 4
        assert reg.acquire("k", None).config.max_batch_size == 2
        reasons = []
        for name, file in (("d", "config.pbtxt"), ("e", "config.pbtxt"), ("gone", "config.yaml")):
            with pytest.raises(ModelNotReady):
                reg.acquire(name, None)
            why = " ".join(e.reason for e in reg.index(ready_only=False) if e.name == name)
            assert f"{name}/{file}: the config file is a link leading out of the model" in why
            with pytest.raises(ModelLoadError, match="config file is a link leading out") as info:
                await reg.load(name, None)
            for shown in (why, info.value.message):
                assert "b/config" not in shown and "outside" not in shown
                assert str(tmp_path) not in shown and "no-such" not in shown
            reasons.append(why.replace(f"{name}/{file}", ""))
        # Whether the file linked to exists or not, the reason is the same.
        assert reasons[1] == reasons[2]
        await reg.close()

    run(scenario())


def test_warm_up_reads_only_the_bytes_its_sample_needs(tmp_path: Path) -> None:
    """A warm-up data file is read as far as the sample goes, however long it is.

    The file here is a pipe whose writer stays open: it never ends, so a
    reader that reads it whole never returns (until the guard closes it).
    """
    model = tmp_path / "repo" / "w"
    _write(model / "1" / "model.onnx", identity_model("FP32"))
    sample = {"data_type": "TYPE_FP32", "dims": [4], "input_data_file": "row.bin"}
    warmup = [{"name": "row", "batch_size": 1, "inputs": {"INPUT0": sample}}]
    (model / "config.yaml").write_text(json.dumps({"max_batch_size": 8, "model_warmup": warmup}))
    (model / "warmup").mkdir()
    os.mkfifo(model / "warmup" / "row.bin")
    writer = os.open(model / "warmup" / "row.bin", os.O_RDWR)  # never blocks, keeps it open
    os.write(writer, np.arange(4, dtype=np.float32).tobytes() + b"\0" * 4096)
    gave_up = threading.Event()

    def give_up() -> None:
        gave_up.set()
        os.close(writer)

    guard = threading.Timer(30.0, give_up)
    guard.start()

    async def scenario() -> None:
        reg = Registry(tmp_path / "repo", Metrics())
        await reg.start()
        assert not gave_up.is_set(), "warm-up read past its sample"
        assert reg.acquire("w", None).version == "1"
        await reg.close()

    try:
        run(scenario())
    finally:
        guard.cancel()
        if not gave_up.is_set():
            os.close(writer)


def test_a_warm_up_file_shorter_than_its_sample_names_the_sizes(tmp_path: Path) -> None:
    model = tmp_path / "repo" / "w"
    _write(model / "1" / "model.onnx", identity_model("FP32"))
    sample = {"data_type": "TYPE_FP32", "dims": [4], "input_data_file": "row.bin"}
    warmup = [{"name": "row", "batch_size": 1, "inputs": {"INPUT0": sample}}]
    (model / "config.yaml").write_text(json.dumps({"max_batch_size": 8, "model_warmup": warmup}))
    (model / "warmup").mkdir()
    (model / "warmup" / "row.bin").write_bytes(b"\0" * 8)

    async def scenario() -> None:
        reg = Registry(tmp_path / "repo", Metrics())
        await reg.start()
        with pytest.raises(ModelNotReady, match=r"row\.bin holds 8 bytes; the sample needs 16"):
            reg.acquire("w", None)
        await reg.close()

    run(scenario())


@pytest.mark.parametrize("name", ["../config.yaml", "../1/model.onnx", "/etc/passwd"])
def test_a_warm_up_file_outside_the_warmup_folder_is_refused(tmp_path: Path, name: str) -> None:
    """A load request may set model_warmup, so its file names stay in <model>/warmup/."""
    model = tmp_path / "repo" / "w"
    _write(model / "1" / "model.onnx", identity_model("FP32"))
    sample = {"data_type": "TYPE_FP32", "dims": [4], "input_data_file": name}
    warmup = [{"name": "row", "batch_size": 1, "inputs": {"INPUT0": sample}}]
    (model / "config.yaml").write_text(json.dumps({"max_batch_size": 8, "model_warmup": warmup}))
    (model / "warmup").mkdir()

    async def scenario() -> None:
        reg = Registry(tmp_path / "repo", Metrics())
        await reg.start()
        with pytest.raises(ModelNotReady, match="outside the model"):
            reg.acquire("w", None)
        await reg.close()

    run(scenario())


@pytest.mark.parametrize("name", ["/etc/passwd", "../b/labels.txt", "x/../../labels.txt"])
def test_label_files_outside_the_model_directory_are_refused(tmp_path: Path, name: str) -> None:
    model = tmp_path / "repo" / "m"
    (model / "1").mkdir(parents=True)
    output = {"name": "y", "data_type": "TYPE_FP32", "dims": [1]}
    inside = _parse({"output": [{**output, "label_filename": "labels.txt"}]})
    check_version_dir(model / "1", inside)  # Triton's usual layout: beside config.pbtxt
    config = _parse({"output": [{**output, "label_filename": name}]})
    with pytest.raises(ModelLoadError) as info:
        check_version_dir(model / "1", config)
    assert info.value.message == (
        "output[0].label_filename must name a file inside the model directory "
        "(a relative path, no '..')"
    )
    (model / "linked.txt").symlink_to("/etc/passwd")
    linked = _parse({"output": [{**output, "label_filename": "linked.txt"}]})
    with pytest.raises(ModelLoadError, match=r"^output\[0\]\.label_filename must name"):
        check_version_dir(model / "1", linked)


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({"platform": "ensemble"}, "an ensemble needs at least one step"),
        ({"ensemble_scheduling": {"step": []}}, 'ensemble_scheduling needs platform: "ensemble"'),
        (
            {"model_operations": {"op_library_filename": ["/tmp/evil.so"]}},
            "model_operations.op_library_filename is not supported",
        ),
    ],
)
def test_configs_naming_what_modelport_cannot_serve_are_refused(
    repo: Path, config: dict[str, Any], why: str
) -> None:
    import yaml

    (repo / "c" / "1").mkdir(parents=True)
    (repo / "c" / "1" / "model.onnx").write_bytes((repo / "a" / "1" / "model.onnx").read_bytes())
    (repo / "c" / "config.yaml").write_text(yaml.safe_dump(config))

    async def scenario() -> None:
        reg = Registry(repo, Metrics())
        await reg.start()
        with pytest.raises(ModelNotReady, match=why) as info:
            reg.acquire("c", None)
        assert "/tmp" not in str(info.value) and str(repo) not in str(info.value)
        with pytest.raises(ModelLoadError, match=why):
            await reg.load("c", None)
        await reg.close()

    run(scenario())


def test_a_policy_refusal_is_409_and_failed_precondition() -> None:
    import grpc

    from modelport.controlplane.traffic import PolicyConflict
    from modelport.dataplane.transport.grpc.errors import grpc_status
    from modelport.dataplane.transport.http.errors import http_status

    refusal = PolicyConflict("model 'm' version 1 is used by the model's traffic policy")
    assert http_status(refusal) == 409
    assert grpc_status(refusal) == grpc.StatusCode.FAILED_PRECONDITION
