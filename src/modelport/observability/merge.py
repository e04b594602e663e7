"""One node's metrics and statistics from what each of its front-end workers reports.

With ``--workers N`` the kernel hands each connection to one of N processes,
so a scrape or a statistics request answered by one worker alone would show
a random 1/N of the node. These functions merge what every worker reports
into what a single server would have said; gathering the reports is the
caller's work, and nothing here does I/O.

Metrics (``merge_expositions``), series by series (same name, same labels):

- Counters, histograms (every ``_bucket``, ``_sum``, ``_count``) and
  summaries' ``_sum`` and ``_count``: summed. Workers share one code base and
  so one set of bucket bounds, which keeps summed buckets cumulative and the
  ``+Inf`` bucket equal to ``_count``. A summary's quantiles cannot be merged
  from quantiles and are left out rather than made up.
- ``*_created`` (the start of a counter or histogram): the earliest.
- Gauges are summed by default: each worker holds its share of the node's
  quantity (``modelport_instances``, ``nv_inference_pending_request_count``,
  ``process_resident_memory_bytes``, ``process_virtual_memory_bytes``,
  ``process_open_fds``, and ``process_max_fds`` so that open over max stays
  the node's fraction). ``_NOT_SUMMED`` lists the exceptions, where every
  worker reports the same node-wide fact: ``modelport_models_loaded`` counts
  the versions a worker's own registry serves, and every worker loads the
  same repository, so the node's count is the largest (a version counts as
  loaded on the node once a worker serves it); the host's CPU and memory
  (``nv_cpu_*``, each worker reads the same ``/proc``) and ``python_info``
  take the largest; ``process_start_time_seconds`` the earliest, when the
  node started.

Triton's ``nv_*`` counters are written without ``_total``; the parser
appends it to their samples, and the merged text writes them again as
Triton names them. Series labelled with a model ``visible`` refuses are
left out; series without a model label always stay, and a family keeps its
HELP and TYPE lines even when every series is left out (as
``Metrics.render`` does). Timestamps on samples are not kept.

Statistics (``merge_statistics``): every count and nanosecond total is
summed, per (model, version) and per batch size; ``last_inference`` is the
latest; ``memory_usage`` entries are summed per (type, id).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import add
from typing import Any, Final

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

_Combine = Callable[[float, float], float]
_Labels = tuple[tuple[str, str], ...]

#: Gauges whose node value is not the sum of the workers' values (see the module doc).
_NOT_SUMMED: Final[dict[str, _Combine]] = {
    "modelport_models_loaded": max,
    "nv_cpu_utilization": max,
    "nv_cpu_memory_total_bytes": max,
    "nv_cpu_memory_used_bytes": max,
    "python_info": max,
    "process_start_time_seconds": min,
}

#: A counter whose TYPE line has no ``_total`` (Triton's names): its samples have none either.
_BARE_COUNTER = re.compile(rb"^# TYPE (\S+) counter[ \t]*$", re.MULTILINE)


@dataclass(slots=True)
class _Family:
    """One family of the merged exposition, as the first worker that has it writes it."""

    written: str
    """The name on the HELP and TYPE lines."""
    kind: str
    documentation: str
    combine: _Combine
    bare: bool
    """A counter whose samples carry no ``_total`` in the text (the parser adds one)."""
    samples: dict[tuple[str, _Labels], float] = field(default_factory=dict)


def _combine(name: str, kind: str) -> _Combine:
    if kind == "gauge" and name.endswith("_created"):
        return min
    if kind == "gauge":
        return _NOT_SUMMED.get(name, add)
    return add


def merge_expositions(
    texts: Sequence[bytes], visible: Callable[[str], bool] | None = None
) -> bytes:
    """The node's exposition from every worker's full one (``Metrics.render(None)``).

    ``visible`` tests a model name as ``Metrics.render`` does; None keeps
    every series. A family appears where the first text that has it puts it.
    Text the parser refuses raises ValueError. Parsing is nearly all of the
    cost (about 10 ms for a worker's few hundred lines), so a caller on the
    event loop runs this in a thread.
    """
    families: dict[str, _Family] = {}
    order: list[str] = []
    allowed: dict[str, bool] = {}
    for text in texts:
        bare = {m.decode() for m in _BARE_COUNTER.findall(text)}
        previous: str | None = None
        for parsed in text_string_to_metric_families(text.decode()):
            family = families.get(parsed.name)
            if family is None:
                family = families[parsed.name] = _new_family(parsed, parsed.name in bare)
                order.insert(order.index(previous) + 1 if previous is not None else 0, parsed.name)
            previous = parsed.name
            _add_samples(family, parsed.samples, visible, allowed)
    return "".join(_render(families[name]) for name in order).encode()


def _new_family(parsed: Metric, typed_bare: bool) -> _Family:
    """``typed_bare``: the text's TYPE line names the family without ``_total``."""
    counter = parsed.type == "counter"
    bare = counter and typed_bare
    return _Family(
        parsed.name + ("_total" if counter and not bare else ""),
        parsed.type,
        parsed.documentation,
        _combine(parsed.name, parsed.type),
        bare,
    )


def _add_samples(
    family: _Family,
    samples: Sequence[Sample],
    visible: Callable[[str], bool] | None,
    allowed: dict[str, bool],
) -> None:
    merged = family.samples
    combine = family.combine
    summary = family.kind == "summary"
    for sample in samples:
        labels = sample.labels
        if summary and "quantile" in labels:
            continue
        if visible is not None and "model" in labels:
            model = labels["model"]
            shown = allowed.get(model)
            if shown is None:
                shown = allowed[model] = visible(model)
            if not shown:
                continue
        name = sample.name[:-6] if family.bare else sample.name
        key = (name, tuple(sorted(labels.items())))
        found = merged.get(key)
        merged[key] = sample.value if found is None else combine(found, sample.value)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _render(family: _Family) -> str:
    """The family as ``generate_latest`` writes one: HELP, TYPE, then its samples."""
    help_text = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    lines = [
        f"# HELP {family.written} {help_text}\n",
        f"# TYPE {family.written} {family.kind}\n",
    ]
    for (name, labels), value in family.samples.items():
        pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
        label_text = f"{{{pairs}}}" if pairs else ""
        lines.append(f"{name}{label_text} {floatToGoString(value)}\n")  # type: ignore[no-untyped-call]
    return "".join(lines)


#: Fields of a statistics entry that keep the latest value rather than the sum.
_LATEST: Final = frozenset({"last_inference"})

#: Lists of a statistics entry merged item by item, and the fields that name an item.
_KEYED_LISTS: Final[dict[str, tuple[str, ...]]] = {
    "batch_stats": ("batch_size",),
    "memory_usage": ("type", "id"),
}


def merge_statistics(entries: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The node's ``model_stats`` from every worker's (``InfoService.statistics``).

    One entry per (name, version) that any worker reports, ordered by name
    and version number, in the shape the transports already encode. The
    inputs are left unchanged.
    """
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for worker in entries:
        for entry in worker:
            key = (entry["name"], entry["version"])
            found = merged.get(key)
            if found is None:
                merged[key] = copy.deepcopy(entry)
            else:
                _merge_into(found, entry, frozenset())
    for entry in merged.values():
        batches = entry.get("batch_stats")
        if isinstance(batches, list):
            batches.sort(key=lambda b: b.get("batch_size", 0))
    return [merged[key] for key in sorted(merged, key=lambda k: (k[0], int(k[1])))]


def _merge_into(into: dict[str, Any], other: dict[str, Any], names: frozenset[str]) -> None:
    """Adds ``other``'s numbers to ``into``'s; ``names`` identify the item and stay.

    Text, flags and lists without a key keep the first worker's value: they
    describe the version (name, version), not its traffic.
    """
    for key, value in other.items():
        if key not in into:
            into[key] = copy.deepcopy(value)
            continue
        mine = into[key]
        if key in names or isinstance(value, bool) or isinstance(mine, bool):
            continue
        if isinstance(value, int | float) and isinstance(mine, int | float):
            into[key] = max(mine, value) if key in _LATEST else mine + value
        elif isinstance(value, dict) and isinstance(mine, dict):
            _merge_into(mine, value, frozenset())
        elif isinstance(value, list) and isinstance(mine, list) and key in _KEYED_LISTS:
            _merge_items(mine, value, _KEYED_LISTS[key])


def _merge_items(into: list[Any], other: list[Any], names: tuple[str, ...]) -> None:
    def name(item: Any) -> tuple[Any, ...] | None:
        return tuple(item.get(n) for n in names) if isinstance(item, dict) else None

    index = {name(item): item for item in into if name(item) is not None}
    identity = frozenset(names)
    for item in other:
        found = index.get(name(item))
        if found is None:
            copied = copy.deepcopy(item)
            into.append(copied)
            if name(item) is not None:
                index[name(item)] = copied
        else:
            _merge_into(found, item, identity)
