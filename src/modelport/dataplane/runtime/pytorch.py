"""PyTorch backend (``backend: pytorch``, files ``model.pt2`` and ``model.pt``).

Two formats, chosen by the file name:

- ``model.pt2``: an ExportedProgram written by ``torch.export.save``. It carries
  its own signature: input names are the graph signature's user inputs, and
  shapes and dtypes come from the example inputs recorded on the graph's
  placeholders, with every dimension exported as dynamic (``torch.export.Dim``)
  reported as -1. So it serves without config.yaml.
- ``model.pt``: a TorchScript archive (``torch.jit.save``). It records no
  shapes the server could trust, so config.yaml must list its inputs and
  outputs; they are passed positionally (see ``_script_order``).

PyTorch outputs have no names, so outputs are the config's names when given,
else Triton's convention for PyTorch: ``output__0``, ``output__1`` ...

Runs on the CPU unless an instance group asks for ``KIND_GPU`` and CUDA is
present; the log says which device runs. Parameters read, as Triton's PyTorch
backend does: ``intra_op_thread_count`` and ``inter_op_thread_count``.

Both files are read by torch's own loaders, which may unpickle parts of them
(``torch.export.load`` retries some payloads with ``weights_only=False``), so
treat them like code: serve only files you trust.
"""

from __future__ import annotations

import logging
import re
import threading
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree  # torch has no public pytree module; export relies on this
from torch.export.graph_signature import InputKind, OutputKind, TensorArgument

from modelport.config.model import ModelConfig, ModelInput, ModelOutput
from modelport.dataplane.runtime.files import version_file
from modelport.dataplane.runtime.threads import default_threads, int_parameter
from modelport.errors import ModelLoadError, first_line
from modelport.types import CONFIG_TYPES, Array, ModelSignature, TensorSpec

log = logging.getLogger("modelport.runtime.pytorch")

EXPORTED_FILENAME = "model.pt2"
SCRIPTED_FILENAME = "model.pt"

#: torch dtypes -> OIP datatypes. BF16 travels as its raw 16-bit patterns (uint16).
TORCH_TYPES: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.uint16: "UINT16",
    torch.uint32: "UINT32",
    torch.uint64: "UINT64",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
    torch.bfloat16: "BF16",
}
DATATYPES: dict[str, torch.dtype] = {v: k for k, v in TORCH_TYPES.items()}

#: Triton's PyTorch naming convention: ``<anything>__<position>``.
_INDEXED = re.compile(r"^.*__(\d+)$")

# torch.set_num_threads is process-wide: every PyTorch model in this server
# shares one intra-op pool. It is therefore set ONCE, by the first PyTorch
# model to load, before any of its inference threads exist (threads created
# later pick the value up when they first run an op). Later models log when
# they would have wanted another count instead of silently changing it under
# the models already serving.
_threads_lock = threading.Lock()
_threads_set: list[int] = []  # empty until the first PyTorch model loads


def _configure_threads(config: ModelConfig, instances: int) -> None:
    """Size torch's intra-op pool once per process (see ``_threads_set``)."""
    intra = int_parameter(config, "intra_op_thread_count", minimum=0)
    inter = int_parameter(config, "inter_op_thread_count", minimum=0)
    if not intra:
        # One core stays with the event loop that decodes and encodes every
        # request; the rest are split between the instances so that
        # instances x threads never oversubscribes the machine.
        intra = default_threads(instances)
    with _threads_lock:
        if not _threads_set:
            torch.set_num_threads(intra)
            _threads_set.append(intra)
            log.info(
                "torch intra-op threads set for the process",
                extra={"model": config.name, "threads": intra},
            )
        elif intra != _threads_set[0]:
            log.info(
                "torch intra-op threads are process-wide and already set; keeping them",
                extra={"model": config.name, "threads": _threads_set[0], "wanted": intra},
            )
        if inter:
            try:
                torch.set_num_interop_threads(inter)
            except RuntimeError:  # torch allows this once, before any inter-op work
                log.warning(
                    "torch inter-op threads can be set only once per process; keeping them",
                    extra={"model": config.name, "threads": torch.get_num_interop_threads()},
                )


def _device(config: ModelConfig) -> torch.device:
    """CUDA for a ``KIND_GPU`` instance group when present, else the CPU."""
    gpu_groups = [g for g in config.instance_group if g.kind == "KIND_GPU"]
    if not gpu_groups:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        log.warning(
            "instance_group asks for KIND_GPU but CUDA is not available; running on cpu",
            extra={"model": config.name},
        )
        return torch.device("cpu")
    index = gpu_groups[0].gpus[0] if gpu_groups[0].gpus else 0
    if index >= torch.cuda.device_count():
        raise ModelLoadError(
            f"instance_group.gpus: GPU {index} does not exist ({torch.cuda.device_count()} visible)"
        )
    return torch.device("cuda", index)


@dataclass(frozen=True, slots=True)
class _Binding:
    """How one served tensor meets the model.

    ``served`` is the shape clients see; ``model`` is the shape the model
    takes or gives, which differs when a batched rank-1 tensor is served as
    [N, 1] (Triton's dims may not be empty when batching) or when config.yaml
    sets ``reshape``. A -1 in ``model`` after the first dimension is copied
    from the array.
    """

    spec: TensorSpec
    model: tuple[int, ...] | None = None
    batched: bool = False


def _dims(val: Any) -> tuple[int, ...]:
    """Concrete sizes stay; symbolic ones (exported ``Dim``) become -1."""
    return tuple(d if isinstance(d, int) else -1 for d in val.shape)


def _datatype(path: Path, what: str, dtype: torch.dtype) -> str:
    datatype = TORCH_TYPES.get(dtype)
    if datatype is None:
        raise ModelLoadError(f"{path}: {what} has dtype {dtype}, which is not served")
    return datatype


def _served(name: str, datatype: str, shape: tuple[int, ...]) -> _Binding:
    """A rank-1 batched tensor is served as [N, 1]; anything else as it is."""
    if len(shape) == 1 and shape[0] == -1:
        return _Binding(TensorSpec(name, datatype, (-1, 1)), model=(-1,), batched=True)
    return _Binding(TensorSpec(name, datatype, shape))


def _example(path: Path, nodes: Mapping[str, Any], name: str, what: str) -> Any:
    """The example tensor torch.export recorded for a graph value (shape and dtype)."""
    node = nodes.get(name)
    val = node.meta.get("val") if node is not None else None
    if not isinstance(val, torch.Tensor):
        raise ModelLoadError(f"{path}: {what} has no recorded example tensor (shape and dtype)")
    return val


def _output_names(config: ModelConfig, count: int, path: Path) -> list[str]:
    if not config.output:
        return [f"output__{i}" for i in range(count)]
    if len(config.output) != count:
        raise ModelLoadError(
            f"{path}: config.yaml lists {len(config.output)} outputs but the model has {count}"
        )
    return [o.name for o in config.output]


def _exported(
    path: Path, config: ModelConfig, device: torch.device
) -> tuple[Callable[..., Any], Any, list[_Binding], list[_Binding]]:
    """Load an ExportedProgram: the callable, its input tree spec and its tensors."""
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises plain RuntimeError/KeyError for bad archives
        raise ModelLoadError(
            f"{path}: not a loadable torch.export program: {first_line(exc)}"
        ) from None
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    nodes = {n.name: n for n in program.graph.nodes}
    graph_inputs: list[tuple[str, str, tuple[int, ...]]] = []
    for spec in program.graph_signature.input_specs:
        if spec.kind != InputKind.USER_INPUT:
            continue
        if not isinstance(spec.arg, TensorArgument):
            raise ModelLoadError(f"{path}: input {spec.arg!r} is not a tensor, which is not served")
        what = f"input {spec.arg.name!r}"
        val = _example(path, nodes, spec.arg.name, what)
        graph_inputs.append((spec.arg.name, _datatype(path, what, val.dtype), _dims(val)))
    names = [n for n, _, _ in graph_inputs]
    declared = [i.name for i in config.input]
    if len(declared) == len(names) and not set(declared) & set(names):
        # A Triton config written for another naming scheme (INPUT__0 ...):
        # bind its names to the graph's inputs in order, as Triton does.
        names = declared
    inputs = [_served(n, dt, shape) for n, (_, dt, shape) in zip(names, graph_inputs, strict=True)]
    graph_outputs: list[tuple[str, tuple[int, ...]]] = []
    for i, spec in enumerate(program.graph_signature.output_specs):
        if spec.kind != OutputKind.USER_OUTPUT:
            continue
        if not isinstance(spec.arg, TensorArgument):
            raise ModelLoadError(f"{path}: output {i} is not a tensor, which is not served")
        val = _example(path, nodes, spec.arg.name, f"output {i}")
        graph_outputs.append((_datatype(path, f"output {i}", val.dtype), _dims(val)))
    out_names = _output_names(config, len(graph_outputs), path)
    outputs = [
        _served(n, dt, shape) for n, (dt, shape) in zip(out_names, graph_outputs, strict=True)
    ]
    return program.module(), program.call_spec.in_spec, inputs, outputs


def _declared(
    path: Path, config: ModelConfig, tensor: ModelInput | ModelOutput, kind: str
) -> _Binding:
    datatype = CONFIG_TYPES[tensor.data_type]
    if datatype not in DATATYPES:
        raise ModelLoadError(f"{path}: {kind} {tensor.name!r} is {tensor.data_type}, not served")
    batch = (-1,) if config.max_batch_size > 0 else ()
    served = (*batch, *tensor.dims)
    model = (*batch, *tensor.reshape.shape) if tensor.reshape is not None else None
    return _Binding(TensorSpec(tensor.name, datatype, served), model, bool(batch))


def _script_order(module: Any, names: list[str], what: str) -> list[str]:
    """The order the model takes (or gives) the config's tensors in.

    By ``forward``'s argument names when the config uses them; else by
    Triton's ``<name>__<index>`` convention; else in config order.
    """
    if what == "input":
        try:
            params = [a.name for a in module.forward.schema.arguments][1:]  # skip self
        except AttributeError:
            params = []
        if sorted(params) == sorted(names):
            return params
    indexed = [_INDEXED.match(n) for n in names]
    if all(m is not None for m in indexed):
        by_index = {int(m.group(1)): n for m, n in zip(indexed, names, strict=True) if m}
        if sorted(by_index) == list(range(len(names))):
            return [by_index[i] for i in range(len(names))]
    return names


def _scripted(
    path: Path, config: ModelConfig, device: torch.device
) -> tuple[Callable[..., Any], list[_Binding], list[_Binding]]:
    """Load a TorchScript archive; its tensors come from config.yaml."""
    if not config.input or not config.output:
        raise ModelLoadError(
            f"{path}: a TorchScript model records no input or output shapes; config.yaml "
            "must list its input and output (name, data_type, dims)"
        )
    try:
        jit_load: Callable[..., Any] = torch.jit.load  # untyped in torch's stubs
        module = jit_load(str(path), map_location=device)
    except Exception as exc:  # torch raises plain RuntimeError for bad archives
        raise ModelLoadError(
            f"{path}: not a loadable TorchScript model: {first_line(exc)}"
        ) from None
    module.eval()
    by_name = {t.name: t for t in config.input}
    inputs = [
        _declared(path, config, by_name[n], "input")
        for n in _script_order(module, list(by_name), "input")
    ]
    out_by_name = {t.name: t for t in config.output}
    outputs = [
        _declared(path, config, out_by_name[n], "output")
        for n in _script_order(module, list(out_by_name), "output")
    ]
    return module, inputs, outputs


def _to_model(array: Array, binding: _Binding, device: torch.device) -> torch.Tensor:
    """numpy -> torch without a copy when the array allows it."""
    if binding.model is not None:
        target = binding.model
        if binding.batched:
            target = (array.shape[0], *target[1:])
        array = array.reshape(target)
    if not array.flags.writeable or not array.flags.c_contiguous:
        # torch.from_numpy shares memory and refuses read-only or negatively
        # strided arrays (wire buffers are read-only); copy only those.
        array = np.array(array, order="C", copy=True)
    tensor = torch.from_numpy(array)
    if binding.spec.datatype == "BF16":
        tensor = tensor.view(torch.bfloat16)
    return tensor.to(device) if device.type != "cpu" else tensor


def _to_numpy(tensor: Any, binding: _Binding) -> Array:
    if not isinstance(tensor, torch.Tensor):
        raise RuntimeError(f"output {binding.spec.name!r} is {type(tensor).__name__}, not a tensor")
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.uint16)
    array: Array = tensor.numpy()
    served = binding.spec.shape
    if binding.model is not None and binding.batched and array.ndim:
        array = array.reshape((array.shape[0], *served[1:]))
    elif binding.model is not None:
        array = array.reshape(served)
    if array.ndim == 1 and len(served) == 2:
        # A batched output the model gives as [N] is served as [N, 1].
        array = array.reshape(-1, 1)
    return array


class PyTorchRuntime:
    """One loaded PyTorch module and how its tensors are served."""

    #: A module may run arbitrary Python, and torch starts intra-op threads of its own.
    inline_safe = False
    pin_safe = False

    def __init__(
        self,
        module: Callable[..., Any],
        in_spec: Any,
        inputs: list[_Binding],
        outputs: list[_Binding],
        device: torch.device,
    ) -> None:
        self._module: Callable[..., Any] | None = module
        self._in_spec = in_spec
        self._inputs = inputs
        self._outputs = outputs
        self._device = device
        self._native = ModelSignature(
            inputs=tuple(b.spec for b in inputs), outputs=tuple(b.spec for b in outputs)
        )

    @property
    def native(self) -> ModelSignature:
        return self._native

    @property
    def device(self) -> torch.device:
        return self._device

    def predict(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        module = self._module
        if module is None:
            raise RuntimeError("model is unloaded")
        with torch.inference_mode():
            flat = [_to_model(inputs[b.spec.name], b, self._device) for b in self._inputs]
            if self._in_spec is not None:
                args, kwargs = pytree.tree_unflatten(flat, self._in_spec)
                result = module(*args, **kwargs)
            else:
                result = module(*flat)
            leaves = pytree.tree_leaves(result)
            if len(leaves) != len(self._outputs):
                raise RuntimeError(
                    f"model returned {len(leaves)} tensors, the configuration lists "
                    f"{len(self._outputs)} outputs"
                )
            wanted = set(outputs)
            return {
                b.spec.name: _to_numpy(t, b)
                for b, t in zip(self._outputs, leaves, strict=True)
                if b.spec.name in wanted
            }

    def unload(self) -> None:
        self._module = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


def load_pytorch(version_dir: Path, config: ModelConfig, instances: int) -> PyTorchRuntime:
    """Load ``model.pt2`` (torch.export) or ``model.pt`` (TorchScript) from a version directory.

    ``default_model_filename`` overrides the file; its suffix picks the format
    (``.pt2`` is an ExportedProgram, anything else TorchScript).
    """
    if config.default_model_filename:
        path = version_file(version_dir, config.default_model_filename)
    elif (version_dir / EXPORTED_FILENAME).is_file():
        path = version_dir / EXPORTED_FILENAME
    else:
        path = version_dir / SCRIPTED_FILENAME
    if not path.is_file():
        raise ModelLoadError(
            f"{path}: no {path.name} in version directory "
            f"(looked for {EXPORTED_FILENAME}, {SCRIPTED_FILENAME})"
        )
    if not zipfile.is_zipfile(path):
        # Both formats are zip archives; say so plainly instead of letting
        # torch log a traceback on the way to a cryptic reader error.
        raise ModelLoadError(f"{path}: not a PyTorch model archive (not a zip file)")
    _configure_threads(config, instances)
    device = _device(config)
    if path.suffix == ".pt2":
        module, in_spec, inputs, outputs = _exported(path, config, device)
    else:
        module, inputs, outputs = _scripted(path, config, device)
        in_spec = None
    runtime = PyTorchRuntime(module, in_spec, inputs, outputs, device)
    log.info(
        "pytorch model ready",
        extra={"model": config.name, "path": str(path), "device": str(device)},
    )
    return runtime
