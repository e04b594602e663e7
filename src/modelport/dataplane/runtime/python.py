"""Custom Python models (``backend: python``, file ``model.py``).

``model.py`` defines a class ``Model``::

    class Model:
        def load(self, version_dir: Path, config: ModelConfig) -> None: ...
        def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

``predict`` gets a whole batch (one array per input, first dimension the
rows when the model batches) and returns one array per output. The
signature is whatever config.yaml declares, since plain Python has no graph
to read it from. One ``Model`` object is built per instance, so each object
sees one batch at a time, as in Triton, and needs no locks of its own.

What the model returns is checked before it reaches a client (every output
present, the declared dtype, the batch's rows), and what it raises is
reported to the caller by type only: the message and traceback may hold
data or paths, so they go to the log (``modelport.runtime.python``).
Triton's python-backend interface (``TritonPythonModel``) is a different
contract (``triton_python_backend_utils``, per-request objects) and is
refused with a message saying so.

A decoupled model (``model_transaction_policy: {decoupled: true}``) streams:
its ``predict`` is a plain generator yielding one dict per response, run on
an instance's thread like any ``predict`` (a user's code may block, so it
never runs on the event loop; an ``async def`` generator is refused for that
reason). :meth:`PythonRuntime.stream` hands the generator to a thread of its
own for the whole stream and steps it one response at a time, so a caller
that goes away stops it after the response being computed.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import logging
import queue
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from modelport.config.model import ModelConfig, ModelInput, ModelOutput
from modelport.dataplane.runtime.files import version_file
from modelport.errors import InferenceFailed, InvalidRequest, ModelLoadError, first_line
from modelport.types import CONFIG_TYPES, DTYPES, Array, ModelSignature, TensorSpec

log = logging.getLogger("modelport.runtime.python")

MODEL_FILENAME = "model.py"
CLASS_NAME = "Model"
TRITON_CLASS = "TritonPythonModel"

#: Widening float casts that keep every value and are not already "safe" in numpy terms.
#: numpy calls int64 -> float64 safe, but it rounds above 2**53, so it is left out.
_LOSSY_SAFE_CASTS = {
    (np.dtype(np.int64), np.dtype(np.float64)),
    (np.dtype(np.uint64), np.dtype(np.float64)),
}


def _describe(exc: BaseException) -> str:
    message = first_line(exc, limit=300, empty="")
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _triton_only(tree: ast.Module) -> bool:
    """True when the file defines Triton's class and binds no ``Model`` at top level."""
    defined: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    return TRITON_CLASS in defined and CLASS_NAME not in defined


def _triton_refusal(path: Path) -> ModelLoadError:
    return ModelLoadError(
        f"{path}: defines {TRITON_CLASS}, Triton's python-backend interface, which modelport "
        f"does not run; define a class {CLASS_NAME} with load(version_dir, config) and "
        "predict(inputs) -> outputs over numpy arrays instead"
    )


def _import(path: Path, config: ModelConfig) -> ModuleType:
    """Run ``model.py`` as a module of its own, under a name no other load shares.

    The module is in ``sys.modules`` (dataclasses and pickling look their
    module up there) until the runtime unloads; ``sys.path`` is not touched.
    """
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        where = f" (line {exc.lineno})" if exc.lineno is not None else ""
        raise ModelLoadError(f"{path}: SyntaxError: {exc.msg}{where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read: {_describe(exc)}") from None
    if _triton_only(tree):
        raise _triton_refusal(path)
    safe = "".join(c if c.isalnum() else "_" for c in config.name or path.parent.parent.name)
    name = f"modelport_user_{safe}_{uuid.uuid4().hex[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if not isinstance(exc, Exception | SystemExit):
            raise
        log.error(
            f"{path.name} failed to import",
            exc_info=True,
            extra={"model": config.name, "path": str(path)},
        )
        raise ModelLoadError(f"{path}: import failed: {_describe(exc)}") from None
    return module


def _spec(t: ModelInput | ModelOutput, batching: bool) -> TensorSpec:
    batch = (-1,) if batching else ()
    return TensorSpec(t.name, CONFIG_TYPES[t.data_type], (*batch, *t.dims))


def _check_dtype(name: str, array: Array, datatype: str, model: str) -> Array:
    """The array in the declared dtype; lossless widenings are applied, nothing else."""
    want = DTYPES[datatype]
    got = array.dtype
    if datatype == "BYTES":
        if got.kind == "S":
            return array.astype(object)
        if got.kind == "U":
            return np.char.encode(array, "utf-8").astype(object)
        if got.kind == "O":
            return _bytes_elements(name, array, model)
    elif got == want:
        return array
    elif (
        got.kind in "biuf"
        and want.kind in "biuf"
        and datatype != "BF16"
        and np.can_cast(got, want, casting="safe")
        and (got.newbyteorder("="), want) not in _LOSSY_SAFE_CASTS
    ):
        return array.astype(want)
    raise InferenceFailed(
        f"model {model} returned output {name!r} as {got}, expected {datatype} "
        f"({want}); convert it in predict (only lossless widening is done for you)"
    )


def _bytes_elements(name: str, array: Array, model: str) -> Array:
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, value in enumerate(array.reshape(-1)):
        if isinstance(value, bytes):
            flat[i] = value
        elif isinstance(value, str):
            flat[i] = value.encode("utf-8")
        else:
            raise InferenceFailed(
                f"model {model} returned output {name!r} with element {i} of type "
                f"{type(value).__name__}, expected BYTES (bytes or str)"
            )
    return out


class PythonRuntime:
    """Instances of a user's ``Model`` class, one per concurrent batch."""

    #: A user's code may block, sleep or start threads: never on the loop, never pinned.
    inline_safe = False
    pin_safe = False

    def __init__(
        self,
        name: str,
        module: ModuleType,
        models: list[Any],
        native: ModelSignature,
        batching: bool,
        decoupled: bool = False,
    ) -> None:
        self._name = name
        self._module = module
        self._models: list[Any] = models
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for m in models:
            self._idle.put(m)
        self._native = native
        self._batching = batching
        self._outputs = {t.name: t for t in native.outputs}
        self.decoupled = decoupled
        """``predict`` is a generator: served by :meth:`stream`, never by :meth:`predict`."""
        self._threads = (
            ThreadPoolExecutor(len(models), thread_name_prefix=f"stream-{name}")
            if decoupled
            else None
        )

    @property
    def native(self) -> ModelSignature:
        return self._native

    @property
    def instances(self) -> int:
        """How many streams may run at once: one per ``Model`` object."""
        return len(self._models)

    def stream(
        self, inputs: Mapping[str, Array], outputs: Sequence[str], freed: Callable[[], None]
    ) -> PythonStream:
        """Start one request's stream on an idle instance, which it holds until it ends.

        The caller allows at most :attr:`instances` streams at once, so an
        instance is always idle here; ``freed`` is called (from the stream's
        thread) once the generator is closed and the instance idle again.
        """
        if self._threads is None:
            raise InferenceFailed(f"model {self._name} is not decoupled: it does not stream")
        rows = next(iter(inputs.values())).shape[0] if self._batching and inputs else None
        model = self._idle.get_nowait()
        stream = PythonStream(self, model, dict(inputs), outputs, rows, freed)
        self._threads.submit(stream.run)
        return stream

    def predict(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        rows = next(iter(inputs.values())).shape[0] if self._batching and inputs else None
        model = self._idle.get()
        try:
            result = model.predict(dict(inputs))
        except InvalidRequest:
            raise  # the model chose to tell the caller what to fix
        except (Exception, SystemExit) as exc:
            log.error(
                "model raised while predicting",
                exc_info=True,
                extra={"model": self._name, "exception": type(exc).__name__},
            )
            raise InferenceFailed(f"model {self._name} raised {type(exc).__name__}") from None
        finally:
            self._idle.put(model)
        return self._check(result, outputs, rows)

    def _check(self, result: Any, outputs: Sequence[str], rows: int | None) -> dict[str, Array]:
        if not isinstance(result, Mapping):
            raise InferenceFailed(
                f"model {self._name} returned {type(result).__name__} from predict, "
                "expected a dict of output name -> numpy array"
            )
        checked: dict[str, Array] = {}
        for name in outputs:
            spec = self._outputs[name]
            if name not in result:
                raise InferenceFailed(
                    f"model {self._name} did not return output {name!r} "
                    f"(returned: {', '.join(map(str, result)) or 'nothing'})"
                )
            array = result[name]
            if not isinstance(array, np.ndarray):
                raise InferenceFailed(
                    f"model {self._name} returned output {name!r} as "
                    f"{type(array).__name__}, expected a numpy array"
                )
            expected = [
                rows if (rows is not None and i == 0) else d for i, d in enumerate(spec.shape)
            ]
            got = list(array.shape)
            if len(got) != len(expected) or any(
                e not in (-1, g) for e, g in zip(expected, got, strict=True)
            ):
                what = f" for a batch of {rows} rows" if rows is not None else ""
                raise InferenceFailed(
                    f"model {self._name} returned output {name!r} with shape {got}, "
                    f"expected {expected}{what} (-1 is any size)"
                )
            checked[name] = _check_dtype(name, array, spec.datatype, self._name)
        return checked

    def unload(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        for model in self._models:
            _quiet_unload(model, self._name)
        self._models = []
        sys.modules.pop(self._module.__name__, None)


#: What a stream's thread is asked: the next response, or to stop.
_NEXT, _STOP = True, False
#: What ``next`` gives once a generator is exhausted (a model may yield None by mistake).
_END = object()


class PythonStream:
    """One request's responses from a generator ``predict``, on one instance.

    The generator runs on a pool thread for the whole stream, one step per
    :meth:`next`: nothing is computed ahead of what the caller asked for, so
    after :meth:`close` at most the response being computed is wasted. The
    thread closes the generator (its ``finally`` blocks run there), puts the
    instance back, then calls ``freed``.
    """

    def __init__(
        self,
        runtime: PythonRuntime,
        model: Any,
        inputs: dict[str, Array],
        outputs: Sequence[str],
        rows: int | None,
        freed: Callable[[], None],
    ) -> None:
        self._runtime = runtime
        self._model = model
        self._inputs = inputs
        self._outputs = outputs
        self._rows = rows
        self._freed = freed
        self._asks: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._loop = asyncio.get_running_loop()
        self._waiting: asyncio.Future[dict[str, Array] | None] | None = None

    async def next(self) -> dict[str, Array] | None:
        """The next response's checked outputs; None once the generator is done.

        Raises InferenceFailed (or the model's InvalidRequest) when the
        model raises or yields something that breaks the output rules; the
        stream is over then.
        """
        waiting: asyncio.Future[dict[str, Array] | None] = self._loop.create_future()
        self._waiting = waiting
        self._asks.put(_NEXT)
        return await waiting

    def close(self) -> None:
        """Stop the stream: the thread closes the generator after its current step."""
        self._asks.put(_STOP)

    def run(self) -> None:
        """The stream's thread: step the generator on request, then clean up."""
        runtime = self._runtime
        items: Iterator[Any] | None = None
        try:
            while self._asks.get() is _NEXT:
                try:
                    if items is None:
                        items = iter(self._model.predict(self._inputs))
                    item = next(items, _END)
                    result = (
                        None if item is _END else runtime._check(item, self._outputs, self._rows)
                    )
                except InvalidRequest as exc:
                    self._settle(None, exc)
                    break
                except InferenceFailed as exc:
                    self._settle(None, exc)
                    break
                except (Exception, SystemExit) as exc:
                    log.error(
                        "model raised while streaming",
                        exc_info=True,
                        extra={"model": runtime._name, "exception": type(exc).__name__},
                    )
                    failed = InferenceFailed(f"model {runtime._name} raised {type(exc).__name__}")
                    self._settle(None, failed)
                    break
                self._settle(result, None)
                if result is None:
                    break
        finally:
            self._finish(items)

    def _finish(self, items: Iterator[Any] | None) -> None:
        close = getattr(items, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                log.error(
                    "model raised while closing its stream",
                    exc_info=True,
                    extra={"model": self._runtime._name},
                )
        self._runtime._idle.put(self._model)
        self._freed()

    def _settle(self, result: dict[str, Array] | None, error: BaseException | None) -> None:
        waiting = self._waiting
        if waiting is not None:
            self._loop.call_soon_threadsafe(_settle, waiting, result, error)


def _settle(
    waiting: asyncio.Future[dict[str, Array] | None],
    result: dict[str, Array] | None,
    error: BaseException | None,
) -> None:
    """Hand a step's outcome to the waiting caller, unless it stopped waiting."""
    if waiting.done():
        return
    if error is not None:
        waiting.set_exception(error)
    else:
        waiting.set_result(result)


def load_python(version_dir: Path, config: ModelConfig, instances: int) -> PythonRuntime:
    """Import ``model.py``, build one ``Model`` per instance and call its ``load``."""
    filename = config.default_model_filename or MODEL_FILENAME
    path = version_file(version_dir, filename)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no {filename} in version directory")
    module = _import(path, config)
    try:
        return _build(path, module, version_dir, config, instances)
    except BaseException:
        sys.modules.pop(module.__name__, None)
        raise


def _build(
    path: Path, module: ModuleType, version_dir: Path, config: ModelConfig, instances: int
) -> PythonRuntime:
    cls = getattr(module, CLASS_NAME, None)
    if cls is None and hasattr(module, TRITON_CLASS):
        raise _triton_refusal(path)
    if not isinstance(cls, type):
        raise ModelLoadError(f"{path}: defines no class {CLASS_NAME}")
    predict = getattr(cls, "predict", None)
    if not callable(predict):
        raise ModelLoadError(f"{path}: class {CLASS_NAME} has no predict(self, inputs) method")
    _check_streaming(path, predict, config.decoupled)
    missing = [
        kind
        for kind, tensors in (("input", config.input), ("output", config.output))
        if not tensors
    ]
    if missing:
        raise ModelLoadError(
            f"{path}: a python model declares its signature in config.yaml, which lists no "
            f"{' and no '.join(missing)} (add {', '.join(missing)}: with name, data_type, dims)"
        )
    batching = config.max_batch_size > 0 or "max_batch_size" not in config.model_fields_set
    native = ModelSignature(
        inputs=tuple(_spec(t, batching) for t in config.input),
        outputs=tuple(_spec(t, batching) for t in config.output),
    )
    label = config.name or path.parent.parent.name
    models: list[Any] = []
    for _ in range(max(1, instances)):
        step = f"{CLASS_NAME}()"
        try:
            model = cls()
            load = getattr(model, "load", None)
            if callable(load):
                step = f"{CLASS_NAME}.load"
                load(version_dir, config)
        except (Exception, SystemExit) as exc:
            log.error(f"{step} failed", exc_info=True, extra={"model": label, "path": str(path)})
            for done in models:
                _quiet_unload(done, label)
            raise ModelLoadError(f"{path}: {step} raised {_describe(exc)}") from None
        models.append(model)
    log.info(
        "python model ready",
        extra={"model": label, "path": str(path), "instances": len(models)},
    )
    return PythonRuntime(label, module, models, native, batching, config.decoupled)


def _check_streaming(path: Path, predict: Any, decoupled: bool) -> None:
    """A decoupled model's predict yields its responses; any other's returns one."""
    if inspect.isasyncgenfunction(predict) or inspect.iscoroutinefunction(predict):
        raise ModelLoadError(
            f"{path}: {CLASS_NAME}.predict is 'async def'; it runs on an instance thread, "
            "not the event loop, so define it with plain 'def' (and 'yield' to stream)"
        )
    generator = inspect.isgeneratorfunction(predict)
    if decoupled and not generator:
        raise ModelLoadError(
            f"{path}: config model_transaction_policy.decoupled is true, so "
            f"{CLASS_NAME}.predict must yield its responses (a generator: one dict of "
            "output arrays per 'yield'); it returns instead"
        )
    if generator and not decoupled:
        raise ModelLoadError(
            f"{path}: {CLASS_NAME}.predict yields (a generator), which only a decoupled "
            "model may do; set 'model_transaction_policy: {decoupled: true}' in config.yaml "
            "to stream its responses, or return one dict of output arrays"
        )


def _quiet_unload(model: Any, label: str) -> None:
    """Call the model's optional ``unload()``; a failure there is logged, not raised."""
    finish = getattr(model, "unload", None)
    if callable(finish):
        try:
            finish()
        except Exception:
            log.error("model.unload raised", exc_info=True, extra={"model": label})
