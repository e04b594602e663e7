"""The PyTorch runtime on small modules built here: torch.export (.pt2) and TorchScript (.pt).

Every served value is compared with running the very same module in this
process; signatures are compared with what autoconfig then makes of them.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install modelport[torch])")

from sklearn.datasets import load_breast_cancer  # noqa: E402
from torch import nn  # noqa: E402

from modelport.config.model import ModelConfig, parse_model_config  # noqa: E402
from modelport.controlplane.repository.autoconfig import complete_config  # noqa: E402
from modelport.dataplane.runtime import pytorch as runtime_module  # noqa: E402
from modelport.dataplane.runtime.pytorch import load_pytorch  # noqa: E402
from modelport.errors import ModelLoadError  # noqa: E402
from modelport.types import TensorSpec  # noqa: E402

TOL = 1e-5


class Classifier(nn.Module):
    """Standardise, then Linear 30 -> 16 -> 2; fixed random weights."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.hidden = nn.Linear(30, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden((x - self.mean) / self.std)))


class TwoHeads(nn.Module):
    """Two inputs; a [N, 3] output and a [N] output (served as [N, 1])."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj(a), (a * b).sum(dim=1)


class Doubler(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


@pytest.fixture(scope="module")
def features() -> np.ndarray[Any, Any]:
    return load_breast_cancer().data.astype(np.float32)


@pytest.fixture(scope="module")
def classifier(features: np.ndarray[Any, Any]) -> Classifier:
    torch.manual_seed(0)
    x = torch.from_numpy(features)
    return Classifier(x.mean(0), x.std(0)).eval()


def expected(module: nn.Module, *arrays: np.ndarray[Any, Any]) -> Any:
    with torch.inference_mode():
        return module(*(torch.from_numpy(a.copy()) for a in arrays))


def export(module: nn.Module, path: Path, *examples: torch.Tensor, dynamic: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ["x"] if len(examples) == 1 else ["a", "b"]
    shapes = {n: {0: torch.export.Dim("batch")} for n in names} if dynamic else None
    program = torch.export.export(module, examples, dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path.parent


def script(module: nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(module).save(str(path))
    return path.parent


def config(**fields: Any) -> ModelConfig:
    return parse_model_config({"name": "m", **fields}, "config.yaml")


SCRIPT_CONFIG: dict[str, Any] = {
    "max_batch_size": 32,
    "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [30]}],
    "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [2]}],
}


# ------------------------------------------------------------ torch.export


@pytest.fixture(scope="module")
def exported_dir(classifier: Classifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "1" / "model.pt2"
    return export(classifier, path, torch.zeros(4, 30))


def test_exported_signature_comes_from_the_graph(exported_dir: Path) -> None:
    rt = load_pytorch(exported_dir, config(), 1)
    assert rt.native.inputs == (TensorSpec("x", "FP32", (-1, 30)),)
    assert rt.native.outputs == (TensorSpec("output__0", "FP32", (-1, 2)),)
    assert rt.device.type == "cpu"
    done = complete_config(config(), rt.native, "config.yaml")
    assert done.max_batch_size == 64
    assert [(i.name, i.data_type, i.dims) for i in done.input] == [("x", "TYPE_FP32", [30])]
    assert [(o.name, o.data_type, o.dims) for o in done.output] == [("output__0", "TYPE_FP32", [2])]


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_exported_predictions_equal_the_module(
    exported_dir: Path, classifier: Classifier, features: np.ndarray[Any, Any], rows: int
) -> None:
    rt = load_pytorch(exported_dir, config(), 1)
    batch = features[:rows]
    got = rt.predict({"x": batch}, ["output__0"])["output__0"]
    assert got.dtype == np.float32
    assert got.shape == (rows, 2)
    np.testing.assert_allclose(got, expected(classifier, batch).numpy(), rtol=0, atol=TOL)


def test_exported_takes_read_only_and_strided_arrays(
    exported_dir: Path, classifier: Classifier, features: np.ndarray[Any, Any]
) -> None:
    rt = load_pytorch(exported_dir, config(), 1)
    frozen = features[:5].copy()
    frozen.flags.writeable = False
    strided = np.asfortranarray(features[5:10])
    for batch in (frozen, strided):
        got = rt.predict({"x": batch}, ["output__0"])["output__0"]
        np.testing.assert_allclose(got, expected(classifier, batch).numpy(), rtol=0, atol=TOL)
    assert not frozen.flags.writeable


def test_exported_output_names_from_config(exported_dir: Path) -> None:
    cfg = config(output=[{"name": "logits", "data_type": "TYPE_FP32", "dims": [2]}])
    rt = load_pytorch(exported_dir, cfg, 1)
    assert [o.name for o in rt.native.outputs] == ["logits"]
    complete_config(cfg, rt.native, "config.yaml")  # consistent: raises otherwise


def test_exported_triton_input_names_bind_in_order(exported_dir: Path) -> None:
    cfg = config(input=[{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [30]}])
    rt = load_pytorch(exported_dir, cfg, 1)
    assert [i.name for i in rt.native.inputs] == ["INPUT__0"]


def test_exported_two_inputs_tuple_outputs_and_rank_one(tmp_path: Path) -> None:
    torch.manual_seed(1)
    module = TwoHeads().eval()
    directory = export(module, tmp_path / "1" / "model.pt2", torch.zeros(3, 4), torch.zeros(3, 4))
    rt = load_pytorch(directory, config(), 1)
    assert rt.native.inputs == (
        TensorSpec("a", "FP32", (-1, 4)),
        TensorSpec("b", "FP32", (-1, 4)),
    )
    assert rt.native.outputs == (
        TensorSpec("output__0", "FP32", (-1, 3)),
        TensorSpec("output__1", "FP32", (-1, 1)),
    )
    rng = np.random.default_rng(0)
    a = rng.random((5, 4), dtype=np.float32)
    b = rng.random((5, 4), dtype=np.float32)
    got = rt.predict({"a": a, "b": b}, ["output__0", "output__1"])
    want0, want1 = expected(module, a, b)
    np.testing.assert_allclose(got["output__0"], want0.numpy(), rtol=0, atol=TOL)
    assert got["output__1"].shape == (5, 1)
    np.testing.assert_allclose(got["output__1"][:, 0], want1.numpy(), rtol=0, atol=TOL)
    only = rt.predict({"a": a, "b": b}, ["output__1"])
    assert list(only) == ["output__1"]


def test_exported_static_shape_is_kept(classifier: Classifier, tmp_path: Path) -> None:
    directory = export(classifier, tmp_path / "1" / "model.pt2", torch.zeros(3, 30), dynamic=False)
    rt = load_pytorch(directory, config(), 1)
    assert rt.native.inputs == (TensorSpec("x", "FP32", (3, 30)),)
    assert complete_config(config(), rt.native, "c").max_batch_size == 0


def test_exported_bf16_travels_as_raw_bits(tmp_path: Path) -> None:
    example = torch.zeros(2, 3, dtype=torch.bfloat16)
    directory = export(Doubler(), tmp_path / "1" / "model.pt2", example)
    rt = load_pytorch(directory, config(), 1)
    assert rt.native.inputs == (TensorSpec("x", "BF16", (-1, 3)),)
    values = torch.tensor([[1.5, -2.0, 0.25]], dtype=torch.bfloat16)
    bits = values.view(torch.uint16).numpy()
    got = rt.predict({"x": bits}, ["output__0"])["output__0"]
    assert got.dtype == np.uint16
    back = torch.from_numpy(got).view(torch.bfloat16)
    assert back.tolist() == [[3.0, -4.0, 0.5]]


def test_exported_unsupported_dtype_fails_load(tmp_path: Path) -> None:
    example = torch.zeros(2, 3, dtype=torch.complex64)
    directory = export(Doubler(), tmp_path / "1" / "model.pt2", example)
    with pytest.raises(ModelLoadError, match=r"model\.pt2: input 'x' has dtype torch\.complex64"):
        load_pytorch(directory, config(), 1)


# ------------------------------------------------------------ TorchScript


@pytest.fixture(scope="module")
def scripted_dir(classifier: Classifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return script(classifier, tmp_path_factory.mktemp("pt") / "1" / "model.pt")


def test_scripted_serves_what_config_lists(
    scripted_dir: Path, classifier: Classifier, features: np.ndarray[Any, Any]
) -> None:
    cfg = config(**SCRIPT_CONFIG)
    rt = load_pytorch(scripted_dir, cfg, 1)
    assert rt.native.inputs == (TensorSpec("INPUT__0", "FP32", (-1, 30)),)
    assert rt.native.outputs == (TensorSpec("OUTPUT__0", "FP32", (-1, 2)),)
    complete_config(cfg, rt.native, "config.yaml")
    got = rt.predict({"INPUT__0": features[:9]}, ["OUTPUT__0"])["OUTPUT__0"]
    np.testing.assert_allclose(got, expected(classifier, features[:9]).numpy(), rtol=0, atol=TOL)


def test_scripted_without_config_fails_load(scripted_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.pt: .*config\.yaml must list its input"):
        load_pytorch(scripted_dir, config(), 1)


def test_scripted_inputs_follow_triton_indices(tmp_path: Path) -> None:
    torch.manual_seed(2)
    module = TwoHeads().eval()
    directory = script(module, tmp_path / "1" / "model.pt")
    cfg = config(
        max_batch_size=8,
        input=[
            {"name": "IN__1", "data_type": "TYPE_FP32", "dims": [4]},
            {"name": "IN__0", "data_type": "TYPE_FP32", "dims": [4]},
        ],
        output=[
            {"name": "OUT__1", "data_type": "TYPE_FP32", "dims": [1]},
            {"name": "OUT__0", "data_type": "TYPE_FP32", "dims": [3]},
        ],
    )
    rt = load_pytorch(directory, cfg, 1)
    assert [i.name for i in rt.native.inputs] == ["IN__0", "IN__1"]
    assert [o.name for o in rt.native.outputs] == ["OUT__0", "OUT__1"]
    rng = np.random.default_rng(3)
    a = rng.random((2, 4), dtype=np.float32)
    b = rng.random((2, 4), dtype=np.float32) + 1
    want0, want1 = expected(module, a, b)
    got = rt.predict({"IN__0": a, "IN__1": b}, ["OUT__0", "OUT__1"])
    np.testing.assert_allclose(got["OUT__0"], want0.numpy(), rtol=0, atol=TOL)
    assert got["OUT__1"].shape == (2, 1)
    np.testing.assert_allclose(got["OUT__1"][:, 0], want1.numpy(), rtol=0, atol=TOL)


def test_scripted_inputs_follow_forward_argument_names(tmp_path: Path) -> None:
    torch.manual_seed(4)
    module = TwoHeads().eval()
    directory = script(module, tmp_path / "1" / "model.pt")
    cfg = config(
        max_batch_size=8,
        input=[
            {"name": "b", "data_type": "TYPE_FP32", "dims": [4]},
            {"name": "a", "data_type": "TYPE_FP32", "dims": [4]},
        ],
        output=[
            {"name": "OUT__0", "data_type": "TYPE_FP32", "dims": [3]},
            {"name": "OUT__1", "data_type": "TYPE_FP32", "dims": [1]},
        ],
    )
    rt = load_pytorch(directory, cfg, 1)
    assert [i.name for i in rt.native.inputs] == ["a", "b"]
    rng = np.random.default_rng(5)
    a = rng.random((3, 4), dtype=np.float32)
    b = rng.random((3, 4), dtype=np.float32)
    want0, want1 = expected(module, a, b)
    got = rt.predict({"a": a, "b": b}, ["OUT__0", "OUT__1"])
    np.testing.assert_allclose(got["OUT__0"], want0.numpy(), rtol=0, atol=TOL)
    assert got["OUT__1"].shape == (3, 1)
    np.testing.assert_allclose(got["OUT__1"][:, 0], want1.numpy(), rtol=0, atol=TOL)


def test_scripted_string_tensor_fails_load(scripted_dir: Path) -> None:
    cfg = config(
        input=[{"name": "x", "data_type": "TYPE_STRING", "dims": [30]}],
        output=[{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}],
    )
    with pytest.raises(ModelLoadError, match=r"input 'x' is TYPE_STRING"):
        load_pytorch(scripted_dir, cfg, 1)


# ------------------------------------------------------------ broken files


def test_corrupt_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "model.pt2").write_bytes(b"not a model at all" * 8)
    with pytest.raises(ModelLoadError, match=r"model\.pt2: not a PyTorch model archive"):
        load_pytorch(tmp_path, config(), 1)


def test_wrong_format_inside_a_zip_names_the_file(scripted_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "model.pt2").write_bytes((scripted_dir / "model.pt").read_bytes())
    with pytest.raises(ModelLoadError, match=r"model\.pt2: not a loadable torch\.export program"):
        load_pytorch(tmp_path, config(), 1)
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as z:
        z.writestr("hello.txt", "hi")
    cfg = config(default_model_filename="other.pt", **SCRIPT_CONFIG)
    with pytest.raises(ModelLoadError, match=r"other\.pt: not a loadable TorchScript model"):
        load_pytorch(tmp_path, cfg, 1)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.pt: no model\.pt in version directory"):
        load_pytorch(tmp_path, config(), 1)


# ------------------------------------------------------------ threads, device


def test_threads_are_set_once_per_process(
    exported_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(runtime_module, "_threads_set", [])
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(os, "cpu_count", lambda: 9)
    load_pytorch(exported_dir, config(), 2)
    load_pytorch(exported_dir, config(), 1)
    with_param = config(parameters={"intra_op_thread_count": {"string_value": "3"}})
    load_pytorch(exported_dir, with_param, 1)
    assert calls == [4]  # (9 - 1) // 2, and only the first load sets it


def test_thread_parameter_wins_on_first_load(
    exported_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(runtime_module, "_threads_set", [])
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    with_param = config(parameters={"intra_op_thread_count": {"string_value": "3"}})
    load_pytorch(exported_dir, with_param, 4)
    assert calls == [3]
    bad = config(parameters={"intra_op_thread_count": {"string_value": "many"}})
    with pytest.raises(ModelLoadError, match="intra_op_thread_count"):
        load_pytorch(exported_dir, bad, 1)


def test_gpu_request_falls_back_to_cpu_with_a_log_line(
    exported_dir: Path,
    classifier: Classifier,
    features: np.ndarray[Any, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = config(instance_group=[{"kind": "KIND_GPU", "count": 1}])
    with caplog.at_level(logging.INFO, logger="modelport.runtime.pytorch"):
        rt = load_pytorch(exported_dir, cfg, 1)
    assert rt.device.type == "cpu"
    assert any("CUDA is not available" in r.getMessage() for r in caplog.records)
    ready = [r for r in caplog.records if r.getMessage() == "pytorch model ready"]
    assert ready and ready[-1].__dict__["device"] == "cpu"
    got = rt.predict({"x": features[:2]}, ["output__0"])["output__0"]
    np.testing.assert_allclose(got, expected(classifier, features[:2]).numpy(), rtol=0, atol=TOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_runs_on_cuda(
    exported_dir: Path,
    scripted_dir: Path,
    classifier: Classifier,
    features: np.ndarray[Any, Any],
) -> None:
    want = expected(classifier, features[:16]).numpy()
    gpu = [{"kind": "KIND_GPU", "count": 1}]
    rt = load_pytorch(exported_dir, config(instance_group=gpu), 1)
    assert rt.device.type == "cuda"
    got = rt.predict({"x": features[:16]}, ["output__0"])["output__0"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    rt.unload()
    rt2 = load_pytorch(scripted_dir, config(instance_group=gpu, **SCRIPT_CONFIG), 1)
    assert rt2.device.type == "cuda"
    got2 = rt2.predict({"INPUT__0": features[:16]}, ["OUTPUT__0"])["OUTPUT__0"]
    np.testing.assert_allclose(got2, want, rtol=0, atol=1e-4)


def test_unload_releases_the_module(exported_dir: Path, features: np.ndarray[Any, Any]) -> None:
    rt = load_pytorch(exported_dir, config(), 1)
    rt.unload()
    with pytest.raises(RuntimeError, match="unloaded"):
        rt.predict({"x": features[:1]}, ["output__0"])
