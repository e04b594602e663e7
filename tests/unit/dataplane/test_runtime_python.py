"""The custom Python runtime: importing model.py, checking results, hiding model errors."""

from __future__ import annotations

import logging
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from modelport.config.model import ModelConfig, parse_model_config
from modelport.controlplane.repository.autoconfig import complete_config
from modelport.dataplane.runtime.python import PythonRuntime, load_python
from modelport.errors import InferenceFailed, InvalidRequest, ModelLoadError
from modelport.types import TensorSpec

EXAMPLE = Path(__file__).parents[3] / "examples" / "custom_python" / "text_stats"

SIGNATURE: dict[str, Any] = {
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}],
    "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}],
}


def config(**fields: Any) -> ModelConfig:
    return parse_model_config({"name": "m", **fields}, "config.yaml")


def write_model(tmp_path: Path, source: str) -> Path:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.py").write_text(textwrap.dedent(source))
    return version


def load(version: Path, cfg: ModelConfig | None = None, instances: int = 1) -> PythonRuntime:
    return load_python(version, cfg or config(**SIGNATURE), instances)


def returning(expr: str) -> str:
    """model.py whose predict returns ``{"y": <expr>}`` with ``x`` the input."""
    return f"""
        import numpy as np

        class Model:
            def predict(self, inputs):
                x = inputs["x"]
                return {{"y": {expr}}}
    """


def user_modules() -> set[str]:
    return {name for name in sys.modules if name.startswith("modelport_user_")}


X = np.arange(6, dtype=np.float32).reshape(2, 3)


# ------------------------------------------------------------------ the example


def test_example_text_stats() -> None:
    data = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    cfg = parse_model_config({"name": "text_stats", **data}, "config.yaml")
    rt = load_python(EXAMPLE / "1", cfg, 1)
    assert rt.native.inputs == (TensorSpec("text", "BYTES", (-1, 1)),)
    assert rt.native.outputs == (
        TensorSpec("length", "INT64", (-1, 1)),
        TensorSpec("words", "INT64", (-1, 1)),
    )
    text = np.array([[b"hello modelport world"], ["h\u00e9llo".encode()], [b""]], dtype=object)
    out = rt.predict({"text": text}, ["length", "words"])
    assert out["length"].tolist() == [[21], [5], [0]]
    assert out["words"].tolist() == [[3], [1], [0]]
    assert complete_config(cfg, rt.native, "config.yaml").max_batch_size == 64
    rt.unload()


# ------------------------------------------------------------------ loading


def test_module_is_private_and_removed_on_unload(tmp_path: Path) -> None:
    path_before = list(sys.path)
    modules_before = user_modules()
    rt = load(write_model(tmp_path, returning("x * 2")))
    added = user_modules() - modules_before
    assert len(added) == 1
    assert next(iter(added)).startswith("modelport_user_m_")
    assert sys.path == path_before
    np.testing.assert_array_equal(rt.predict({"x": X}, ["y"])["y"], X * 2)
    rt.unload()
    assert user_modules() == modules_before


def test_two_loads_do_not_share_module_state(tmp_path: Path) -> None:
    source = """
        import numpy as np
        COUNT = []

        class Model:
            def load(self, version_dir, config):
                COUNT.append(1)
                self.n = len(COUNT)

            def predict(self, inputs):
                return {"y": inputs["x"] * 0 + self.n}
    """
    version = write_model(tmp_path, source)
    a, b = load(version), load(version)
    assert a.predict({"x": X}, ["y"])["y"][0, 0] == 1
    assert b.predict({"x": X}, ["y"])["y"][0, 0] == 1


def test_dataclasses_with_string_annotations_work(tmp_path: Path) -> None:
    source = """
        from __future__ import annotations
        from dataclasses import dataclass
        import numpy as np

        @dataclass
        class Scale:
            factor: float

        class Model:
            def load(self, version_dir, config):
                self.scale = Scale(3.0)

            def predict(self, inputs):
                return {"y": (inputs["x"] * self.scale.factor).astype(np.float32)}
    """
    rt = load(write_model(tmp_path, source))
    np.testing.assert_array_equal(rt.predict({"x": X}, ["y"])["y"], X * 3)


def test_load_gets_version_dir_and_config(tmp_path: Path) -> None:
    source = """
        import numpy as np

        class Model:
            def load(self, version_dir, config):
                self.offset = float((version_dir / "offset.txt").read_text())
                assert config.name == "m"

            def predict(self, inputs):
                return {"y": inputs["x"] + np.float32(self.offset)}
    """
    version = write_model(tmp_path, source)
    (version / "offset.txt").write_text("10")
    np.testing.assert_array_equal(load(version).predict({"x": X}, ["y"])["y"], X + 10)


def test_one_model_object_per_instance(tmp_path: Path) -> None:
    source = """
        import threading, time
        import numpy as np

        class Model:
            def load(self, version_dir, config):
                self.busy = threading.Lock()

            def predict(self, inputs):
                if not self.busy.acquire(blocking=False):
                    raise RuntimeError("two batches at once on one object")
                try:
                    time.sleep(0.02)
                    return {"y": inputs["x"]}
                finally:
                    self.busy.release()
    """
    rt = load(write_model(tmp_path, source), instances=3)
    assert len(rt._models) == 3
    errors: list[BaseException] = []

    def run() -> None:
        try:
            rt.predict({"x": X}, ["y"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert time.perf_counter() - started < 0.5


def test_signature_must_be_in_config(tmp_path: Path) -> None:
    version = write_model(tmp_path, returning("x"))
    with pytest.raises(ModelLoadError) as err:
        load(version, config())
    assert "model.py" in err.value.message
    assert "lists no input and no output" in err.value.message
    with pytest.raises(ModelLoadError, match="lists no output"):
        load(version, config(input=SIGNATURE["input"]))


def test_without_batching_the_shapes_are_the_dims(tmp_path: Path) -> None:
    cfg = config(
        max_batch_size=0,
        input=[{"name": "x", "data_type": "TYPE_FP32", "dims": [2, 3]}],
        output=[{"name": "y", "data_type": "TYPE_FP32", "dims": [-1, 3]}],
    )
    rt = load(write_model(tmp_path, returning("x")), cfg)
    assert rt.native.inputs == (TensorSpec("x", "FP32", (2, 3)),)
    assert rt.native.outputs == (TensorSpec("y", "FP32", (-1, 3)),)
    complete_config(cfg, rt.native, "config.yaml")
    assert rt.predict({"x": X}, ["y"])["y"].shape == (2, 3)


def test_triton_python_backend_is_refused(tmp_path: Path) -> None:
    source = """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def initialize(self, args):
                pass

            def execute(self, requests):
                return []
    """
    with pytest.raises(ModelLoadError) as err:
        load(write_model(tmp_path, source))
    assert "TritonPythonModel" in err.value.message
    assert "Triton's python-backend interface" in err.value.message
    assert "does not run" in err.value.message


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        load(write_model(tmp_path, "class Model:\n    def predict(self, inputs)\n"))
    assert "model.py: SyntaxError" in err.value.message
    assert "line 2" in err.value.message


def test_import_error_names_type_and_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = user_modules()
    with (
        caplog.at_level(logging.ERROR, logger="modelport.runtime.python"),
        pytest.raises(ModelLoadError) as err,
    ):
        load(write_model(tmp_path, "import no_such_package_here\n"))
    assert "model.py: import failed: ModuleNotFoundError" in err.value.message
    assert "no_such_package_here" in err.value.message
    assert "Traceback" not in err.value.message
    assert user_modules() == before
    assert "no_such_package_here" in caplog.text  # the traceback is in the log


def test_missing_model_class(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.py: defines no class Model"):
        load(write_model(tmp_path, "class Other:\n    pass\n"))


def test_load_raising_is_a_load_error(tmp_path: Path) -> None:
    source = """
        class Model:
            def load(self, version_dir, config):
                raise FileNotFoundError("weights.bin is missing")

            def predict(self, inputs):
                return {}
    """
    with pytest.raises(ModelLoadError) as err:
        load(write_model(tmp_path, source))
    message = err.value.message
    assert "model.py: Model.load raised FileNotFoundError: weights.bin is missing" in message
    assert "Traceback" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no model\.py"):
        load(tmp_path)


# ------------------------------------------------------------------ predicting


def test_model_exception_hides_message_and_logs_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = """
        class Model:
            def predict(self, inputs):
                raise KeyError("secret-customer-42")
    """
    rt = load(write_model(tmp_path, source))
    with (
        caplog.at_level(logging.ERROR, logger="modelport.runtime.python"),
        pytest.raises(InferenceFailed) as err,
    ):
        rt.predict({"x": X}, ["y"])
    assert err.value.message == "model m raised KeyError"
    assert err.value.__cause__ is None and err.value.__suppress_context__
    record = next(r for r in caplog.records if r.name == "modelport.runtime.python")
    assert record.exc_info is not None
    assert "secret-customer-42" in caplog.text
    assert "Traceback" in caplog.text
    # The object went back to the pool: the next batch still runs (and raises again).
    with pytest.raises(InferenceFailed):
        rt.predict({"x": X}, ["y"])


def test_value_error_from_the_model_is_not_blamed_on_the_caller(tmp_path: Path) -> None:
    source = """
        class Model:
            def predict(self, inputs):
                raise ValueError("bad")
    """
    rt = load(write_model(tmp_path, source))
    with pytest.raises(InferenceFailed, match=r"model m raised ValueError$"):
        rt.predict({"x": X}, ["y"])


def test_invalid_request_from_the_model_reaches_the_caller(tmp_path: Path) -> None:
    source = """
        from modelport.errors import InvalidRequest

        class Model:
            def predict(self, inputs):
                raise InvalidRequest("x must be positive")
    """
    rt = load(write_model(tmp_path, source))
    with pytest.raises(InvalidRequest, match="x must be positive"):
        rt.predict({"x": X}, ["y"])


@pytest.mark.parametrize(
    ("expr", "fragments"),
    [
        ("x.astype(np.float64)", ["'y'", "float64", "FP32"]),
        ("x.astype(np.int64)", ["'y'", "int64", "FP32"]),
        ("x[:1]", ["'y'", "shape [1, 3]", "expected [2, 3]", "2 rows"]),
        ("x[:, :2]", ["'y'", "shape [2, 2]"]),
        ("x.reshape(-1)", ["'y'", "shape [6]"]),
        ("x.tolist()", ["'y'", "list", "numpy array"]),
    ],
)
def test_wrong_results_are_refused_naming_the_output(
    tmp_path: Path, expr: str, fragments: list[str]
) -> None:
    rt = load(write_model(tmp_path, returning(expr)))
    with pytest.raises(InferenceFailed) as err:
        rt.predict({"x": X}, ["y"])
    for fragment in fragments:
        assert fragment in err.value.message, (fragment, err.value.message)


def test_missing_output_and_non_dict(tmp_path: Path) -> None:
    rt = load(write_model(tmp_path, returning("x").replace('{"y": x}', '{"z": x}')))
    with pytest.raises(InferenceFailed, match="did not return output 'y'"):
        rt.predict({"x": X}, ["y"])
    source = """
        class Model:
            def predict(self, inputs):
                return [inputs["x"]]
    """
    rt = load(write_model(tmp_path, source))
    with pytest.raises(InferenceFailed, match="returned list from predict"):
        rt.predict({"x": X}, ["y"])


def test_lossless_widening_is_applied(tmp_path: Path) -> None:
    cfg = config(
        input=SIGNATURE["input"],
        output=[{"name": "y", "data_type": "TYPE_INT64", "dims": [3]}],
    )
    rt = load(write_model(tmp_path, returning("x.astype(np.int32)")), cfg)
    out = rt.predict({"x": X}, ["y"])["y"]
    assert out.dtype == np.int64
    rt = load(write_model(tmp_path, returning("x.astype(np.float64)")), cfg)
    with pytest.raises(InferenceFailed, match="float64, expected INT64"):
        rt.predict({"x": X}, ["y"])
    cfg64 = config(
        input=SIGNATURE["input"],
        output=[{"name": "y", "data_type": "TYPE_FP64", "dims": [3]}],
    )
    rt = load(write_model(tmp_path, returning("x")), cfg64)
    assert rt.predict({"x": X}, ["y"])["y"].dtype == np.float64
    rt = load(write_model(tmp_path, returning("x.astype(np.int64)")), cfg64)
    with pytest.raises(InferenceFailed, match="int64, expected FP64"):
        rt.predict({"x": X}, ["y"])


def test_bytes_outputs_accept_bytes_and_text(tmp_path: Path) -> None:
    cfg = config(
        input=SIGNATURE["input"],
        output=[{"name": "y", "data_type": "TYPE_STRING", "dims": [1]}],
    )
    for expr in (
        'np.array([["a"], ["b"]])',
        'np.array([[b"a"], [b"b"]])',
        'np.array([["a"], [b"b"]], dtype=object)',
    ):
        rt = load(write_model(tmp_path, returning(expr)), cfg)
        out = rt.predict({"x": X}, ["y"])["y"]
        assert out.dtype == object
        assert out.tolist() == [[b"a"], [b"b"]]
    rt = load(write_model(tmp_path, returning("np.array([[1], [2]], dtype=object)")), cfg)
    with pytest.raises(InferenceFailed, match="element 0 of type int"):
        rt.predict({"x": X}, ["y"])


def test_only_requested_outputs_are_returned(tmp_path: Path) -> None:
    cfg = config(
        input=SIGNATURE["input"],
        output=[
            {"name": "y", "data_type": "TYPE_FP32", "dims": [3]},
            {"name": "z", "data_type": "TYPE_FP32", "dims": [3]},
        ],
    )
    rt = load(write_model(tmp_path, returning("x, 'z': x + 1")), cfg)
    assert set(rt.predict({"x": X}, ["z"])) == {"z"}


def test_unload_calls_the_models_unload(tmp_path: Path) -> None:
    source = """
        import numpy as np
        CALLS = []

        class Model:
            def predict(self, inputs):
                return {"y": inputs["x"]}

            def unload(self):
                CALLS.append(1)
                raise RuntimeError("ignored")
    """
    rt = load(write_model(tmp_path, source), instances=2)
    module = rt._module
    rt.unload()
    assert module.CALLS == [1, 1]


def test_constructor_raising_is_named(tmp_path: Path) -> None:
    source = """
        class Model:
            def __init__(self):
                raise RuntimeError("no GPU here")

            def predict(self, inputs):
                return {}
    """
    with pytest.raises(ModelLoadError, match=r"model\.py: Model\(\) raised RuntimeError: no GPU"):
        load(write_model(tmp_path, source))
