"""Process instances: tensors through shared memory, crashes, timeouts, clean unload."""

from __future__ import annotations

import errno
import logging
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport.config.model import ModelConfig, parse_model_config
from modelport.dataplane.runtime.process import ProcessRuntime, load_in_processes
from modelport.errors import InferenceFailed, InvalidRequest, ModelLoadError, Unavailable

SECRET = "card-4111-1111-1111-1111"

#: Echoes every input as ``o_<name>`` and reports its pid. The first element
#: of ``a`` steers it: negative sleeps that many seconds (after leaving its pid
#: in the marks directory), 13 raises, 7 refuses the request, 99 exits, 5 answers
#: 2 MiB per row in ``o_e``.
MODEL = f"""
    import os
    import time
    from pathlib import Path

    import numpy as np

    from modelport.errors import InvalidRequest


    class Model:
        def load(self, version_dir, config):
            self.marks = Path(config.parameter("marks"))

        def predict(self, inputs):
            a = inputs["a"]
            first = float(a.flat[0]) if a.size else 0.0
            if first < 0:
                (self.marks / str(os.getpid())).write_text("busy")
                time.sleep(-first)
            if first == 13:
                raise KeyError("{SECRET}")
            if first == 7:
                raise InvalidRequest("seven is not accepted")
            if first == 99:
                os._exit(3)
            if first == 5:  # a small request with a large answer
                inputs = {{**inputs, "e": np.zeros((a.shape[0], 1 << 20), np.float16)}}
            out = {{f"o_{{k}}": v for k, v in inputs.items()}}
            out["pid"] = np.full((a.shape[0], 1), os.getpid(), dtype=np.int64)
            return out
"""

TENSORS = {
    "a": ("TYPE_FP32", [3]),
    "b": ("TYPE_INT8", [2, 2]),
    "c": ("TYPE_BOOL", [1]),
    "d": ("TYPE_STRING", [1]),
    "e": ("TYPE_FP16", [-1]),
    "f": ("TYPE_UINT64", [1]),
}


def model_config(marks: Path, **modelport: Any) -> ModelConfig:
    tensors = [{"name": n, "data_type": t, "dims": d} for n, (t, d) in TENSORS.items()]
    return parse_model_config(
        {
            "name": "m",
            "backend": "python",
            "max_batch_size": 1 << 16,
            "input": tensors,
            "output": [
                *({**t, "name": f"o_{t['name']}"} for t in tensors),
                {"name": "pid", "data_type": "TYPE_INT64", "dims": [1]},
            ],
            "parameters": {"marks": {"string_value": str(marks)}},
            "modelport": {"instance_process": True, **modelport},
        },
        "config.yaml",
    )


def version_dir(root: Path, source: str = MODEL) -> Path:
    version = root / "m" / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.py").write_text(textwrap.dedent(source))
    (root / "marks").mkdir(exist_ok=True)
    return version


def start(root: Path, instances: int, source: str = MODEL, **modelport: Any) -> ProcessRuntime:
    version = version_dir(root, source)
    return load_in_processes(
        version, model_config(root / "marks", **modelport), instances, segment_bytes=4096
    )


def batch(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    text = np.empty((rows, 1), dtype=object)
    text[:, 0] = [f"row {i} of {seed}".encode() for i in range(rows)]
    return {
        "a": rng.random((rows, 3), dtype=np.float32) + 1,
        "b": rng.integers(-128, 127, (rows, 2, 2), dtype=np.int8),
        "c": rng.random((rows, 1)) > 0.5,
        "d": text,
        "e": rng.random((rows, 5)).astype(np.float16),
        "f": rng.integers(0, 2**63, (rows, 1), dtype=np.uint64) * 2,
    }


def echoed(rt: ProcessRuntime, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    result = rt.predict(inputs, [f"o_{n}" for n in inputs])
    return {n[2:]: a for n, a in result.items()}


def predict_a(rt: ProcessRuntime, first: float) -> dict[str, np.ndarray]:
    return rt.predict({"a": np.full((1, 3), first, dtype=np.float32)}, ["o_a", "pid"])


def busy_pid(marks: Path) -> int:
    """The pid of the worker that started a slow batch (it leaves a file named so)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = list(marks.iterdir())
        if found:
            found[0].unlink()
            return int(found[0].name)
        time.sleep(0.01)
    raise AssertionError("no worker started the slow batch")


def exists(segment: str) -> bool:
    return Path("/dev/shm", segment).exists()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessRuntime]:
    rt = start(tmp_path_factory.mktemp("process"), instances=2)
    yield rt
    rt.unload()


# ------------------------------------------------------------------ tensors


@pytest.mark.parametrize("rows", [1, 3, 0])
def test_round_trip_every_dtype(shared: ProcessRuntime, rows: int) -> None:
    inputs = batch(rows, seed=rows)
    out = echoed(shared, inputs)
    assert set(out) == set(inputs)
    for name, array in inputs.items():
        assert out[name].dtype == array.dtype, name
        assert out[name].shape == array.shape, name
        np.testing.assert_array_equal(out[name], array)


def test_runs_in_other_processes(shared: ProcessRuntime) -> None:
    pid = predict_a(shared, 1)["pid"][0, 0]
    assert pid != os.getpid()
    assert pid in shared.pids
    assert len(shared.pids) == 2


def test_strided_input_arrives_as_given(shared: ProcessRuntime) -> None:
    a = np.asfortranarray(np.arange(1, 13, dtype=np.float32).reshape(4, 3))
    out = shared.predict({"a": a[::-1]}, ["o_a"])
    np.testing.assert_array_equal(out["o_a"], a[::-1])


def test_outputs_are_the_callers_own_copies(shared: ProcessRuntime) -> None:
    first = echoed(shared, {"a": np.ones((2, 3), np.float32)})["a"]
    echoed(shared, {"a": np.full((2, 3), 5, np.float32)})
    echoed(shared, {"a": np.full((2, 3), 6, np.float32)})
    np.testing.assert_array_equal(first, np.ones((2, 3), np.float32))
    first[0, 0] = 3  # writable, and not the segment
    assert echoed(shared, {"a": np.ones((2, 3), np.float32)})["a"][0, 0] == 1


def test_concurrent_batches_each_get_their_own_rows(shared: ProcessRuntime) -> None:
    def one(seed: int) -> None:
        inputs = batch(1 + seed % 7, seed=seed)
        for name, array in echoed(shared, inputs).items():
            np.testing.assert_array_equal(array, inputs[name])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(64)))


def test_batch_larger_than_the_segment_replaces_it(tmp_path: Path) -> None:
    rt = start(tmp_path, instances=1)
    try:
        echoed(rt, batch(2))
        small = rt.segment_names()
        inputs = batch(20_000, seed=5)  # ~0.5 MB against 4 KiB segments
        out = echoed(rt, inputs)
        for name, array in inputs.items():
            np.testing.assert_array_equal(out[name], array)
        grown = rt.segment_names()
        assert len(grown) == 2
        assert not set(small) & set(grown)
        assert not any(exists(s) for s in small)  # the replaced ones are unlinked
        np.testing.assert_array_equal(echoed(rt, batch(2, seed=9))["a"], batch(2, seed=9)["a"])
    finally:
        rt.unload()


def test_no_room_in_shared_memory_is_unavailable_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = start(tmp_path, instances=1)
    real = os.posix_fallocate

    def small_shm(fd: int, offset: int, length: int) -> None:
        if length > 1 << 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, offset, length)

    try:
        monkeypatch.setattr(os, "posix_fallocate", small_shm)
        with pytest.raises(Unavailable, match=r"no room in shared memory .*--shm-size"):
            rt.predict({"a": np.full((1, 3), 5, np.float32)}, ["o_e"])  # outputs too large
        with pytest.raises(Unavailable, match="no room in shared memory"):
            rt.predict({"a": np.ones((200_000, 3), np.float32)}, ["o_a"])  # inputs too large
        assert predict_a(rt, 4)["o_a"][0, 0] == 4
        monkeypatch.undo()
        assert rt.predict({"a": np.full((1, 3), 5, np.float32)}, ["o_e"])["o_e"].shape == (
            1,
            1 << 20,
        )
    finally:
        rt.unload()


# ------------------------------------------------------------------ model errors


def test_model_exception_is_inference_failed_without_its_message(
    shared: ProcessRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(InferenceFailed) as info:
        predict_a(shared, 13)
    assert info.value.message == "model m raised KeyError"
    logged = [r for r in caplog.records if r.name == "modelport.runtime.python"]
    assert logged, "the worker's log record reaches the server's logger"
    assert SECRET in (logged[0].exc_text or "")
    assert logged[0].worker_pid in shared.pids
    assert predict_a(shared, 1)["o_a"][0, 0] == 1  # the worker keeps serving


def test_invalid_request_from_the_model_keeps_its_message(shared: ProcessRuntime) -> None:
    with pytest.raises(InvalidRequest, match="seven is not accepted"):
        predict_a(shared, 7)


def test_load_error_names_the_file_and_exception(tmp_path: Path) -> None:
    source = """
        class Model:
            def load(self, version_dir, config):
                raise FileNotFoundError("tokenizer.json is missing")

            def predict(self, inputs):
                return {}
    """
    with pytest.raises(ModelLoadError, match=r"model\.py: Model\.load raised FileNotFoundError"):
        start(tmp_path, instances=2, source=source)


def test_worker_dying_while_loading_is_a_load_error(tmp_path: Path) -> None:
    source = """
        import os

        os._exit(4)
    """
    with pytest.raises(ModelLoadError, match="instance process exited with code 4"):
        start(tmp_path, instances=1, source=source)


def test_unknown_backend_is_refused_before_any_process_starts(tmp_path: Path) -> None:
    cfg = model_config(tmp_path).model_copy(update={"backend": "tensorrt"})
    with pytest.raises(ModelLoadError, match="backend 'tensorrt' is not served"):
        load_in_processes(version_dir(tmp_path), cfg, 1)


# ------------------------------------------------------------------ crashes


def test_killed_worker_fails_its_batch_and_is_restarted(tmp_path: Path) -> None:
    rt = start(tmp_path, instances=1)
    try:
        echoed(rt, batch(4))
        held = rt.segment_names()
        with ThreadPoolExecutor(1) as pool:
            slow: Future[Any] = pool.submit(predict_a, rt, -120)
            pid = busy_pid(tmp_path / "marks")
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(Unavailable, match="was killed by SIGKILL") as info:
                slow.result(timeout=60)  # long before the 120 s sleep would end
        assert "retry" in info.value.message
        assert not any(exists(s) for s in held)
        after = predict_a(rt, 2)  # waits for the restarted worker
        assert after["o_a"][0, 0] == 2
        assert after["pid"][0, 0] != pid
        assert rt.pids == [after["pid"][0, 0]]
    finally:
        rt.unload()


def test_worker_exiting_mid_batch_is_unavailable_then_serves_again(shared: ProcessRuntime) -> None:
    with pytest.raises(Unavailable, match="exited with code 3"):
        predict_a(shared, 99)
    for seed in range(4):  # both instances, whichever restarted
        inputs = batch(2, seed=seed)
        np.testing.assert_array_equal(echoed(shared, inputs)["d"], inputs["d"])


def test_batch_past_instance_timeout_restarts_the_worker(tmp_path: Path) -> None:
    rt = start(tmp_path, instances=1, instance_timeout_s=0.5)
    try:
        before = rt.pids
        with pytest.raises(Unavailable, match=r"ran past instance_timeout_s \(0.5 s\)"):
            predict_a(rt, -120)
        after = predict_a(rt, 3)
        assert after["o_a"][0, 0] == 3
        assert after["pid"][0, 0] not in before
    finally:
        rt.unload()


# ------------------------------------------------------------------ unload


def test_unload_stops_workers_and_leaves_no_segments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = MODEL + textwrap.indent(
        textwrap.dedent("""
            def unload(self):
                import logging
                logging.getLogger("user.model").warning("unloading")
        """),
        "    " * 2,
    )
    rt = start(tmp_path, instances=2, source=source)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: echoed(rt, batch(3000, seed=s)), range(6)))
    names = rt.segment_names()
    pids = rt.pids
    assert len(names) == 4 and all(exists(s) for s in names)
    with caplog.at_level(logging.WARNING, logger="user.model"):
        rt.unload()
    assert not any(exists(s) for s in names)
    assert all(gone(p) for p in pids)
    assert rt.segment_names() == []
    assert [r.message for r in caplog.records if r.name == "user.model"] == ["unloading"] * 2
