"""The management API's answers as tables and short reports for people.

Each function takes the JSON the server sent (``--json`` prints that same
JSON instead) and prints it. Fields a newer server adds are ignored; fields
an older one lacks show as ``-``.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from modelport.cli.output import iso_time, number, say, show, table, text


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _percent(value: Any) -> str:
    return text(value) if not isinstance(value, int | float) else f"{value:g}%"


# ------------------------------------------------------------------ models


def models(data: Any) -> None:
    """``GET /models``: one row per version."""
    found = _items(_dict(data).get("models"))
    if not found:
        say("no models")
        return
    grid = table(
        "MODEL", "VERSION", "STATE", "WEIGHT", "CANARY", "REASON", wide=["MODEL", "REASON"]
    )
    for entry in found:
        model = _dict(entry)
        versions = _items(model.get("versions")) or [{}]
        for i, item in enumerate(versions):
            version = _dict(item)
            first = i == 0
            grid.add_row(
                text(model.get("name")) if first else "",
                text(version.get("version")),
                text(version.get("state")),
                _percent(version.get("weight")),
                text(model.get("canary")) if first else "",
                text(version.get("reason")),
            )
    show(grid)


def version_change(data: Any) -> None:
    """A version load or unload: where the version stands now."""
    d = _dict(data)
    line = f"{d.get('model')} version {d.get('version')}: {d.get('state')}"
    if d.get("reason"):
        line += f" ({d['reason']})"
    say(line)


# ------------------------------------------------------------------ traffic

WINDOW_COLUMNS = ("REQUESTS", "ERRORS", "ERROR RATE", "P99 MS", "AGREEMENT")


def _window_cells(window: Any) -> list[str]:
    w = _dict(window)
    if not w:
        return ["-"] * len(WINDOW_COLUMNS)
    compared = w.get("shadow_compared")
    agreement = number(w.get("agreement"), ".2%")
    if isinstance(compared, int) and compared:
        agreement += f" of {compared}"
    return [
        number(w.get("requests")),
        number(w.get("errors")),
        number(w.get("error_rate"), ".2%"),
        number(w.get("p99_ms"), ".1f"),
        agreement,
    ]


def traffic(data: Any) -> None:
    """``GET``/``PUT /traffic`` and rollback: the policy and each version's live window."""
    d = _dict(data)
    model = d.get("model")
    policy = d.get("policy")
    if not isinstance(policy, dict):
        say(
            f"{model}: no traffic policy; requests that name no version go to the highest "
            "ready version"
        )
        return
    updated = iso_time(d.get("updated_at"))
    say(
        f"{model}: traffic policy revision {d.get('revision')}, updated {updated} "
        f"by {d.get('updated_by') or '-'}"
    )
    if policy.get("sticky_key"):
        say(f"sticky key: {policy['sticky_key']} (a caller keeps its version)")
    windows = _dict(d.get("windows"))
    grid = table("VERSION", "ROUTE", *WINDOW_COLUMNS)
    for item in _items(policy.get("routes")):
        route = _dict(item)
        version = str(route.get("version"))
        grid.add_row(
            text(version), _percent(route.get("weight")), *_window_cells(windows.get(version))
        )
    shadow = _dict(policy.get("shadow"))
    if shadow:
        version = str(shadow.get("version"))
        fraction = shadow.get("fraction")
        copied = f"shadow {fraction:.0%}" if isinstance(fraction, int | float) else "shadow"
        grid.add_row(text(version), copied, *_window_cells(windows.get(version)))
    show(grid)


# ------------------------------------------------------------------ canaries


def _pairs(rows: list[tuple[str, str]]) -> Table:
    grid = table("", "", wide=[""])
    grid.show_header = False
    grid.columns[0].style = "bold"
    for name, value in rows:
        grid.add_row(name, value)
    return grid


def canary(data: Any) -> None:
    """A canary's state, its step and the candidate's live window."""
    d = _dict(data)
    spec = _dict(d.get("spec"))
    steps = [s for s in _items(spec.get("steps")) if isinstance(s, int)]
    step = spec.get("step")
    slo = _dict(spec.get("slo"))
    bounds = (
        ("max_error_rate", "error rate <= {:g}"),
        ("max_p99_ms", "p99 <= {:g} ms"),
        ("min_agreement", "agreement >= {:g}"),
    )
    limits = [
        form.format(slo[key]) for key, form in bounds if isinstance(slo.get(key), int | float)
    ]
    at_step = "-"
    if isinstance(step, int) and steps:
        at_step = f"{min(step + 1, len(steps))} of {len(steps)}"
    rows = [
        ("model", text(d.get("model"))),
        ("state", text(d.get("state"))),
        ("candidate", text(spec.get("version"))),
        ("stable", text(spec.get("stable"))),
        ("step", at_step),
        ("weight", _percent(spec.get("weight"))),
        ("steps", " ".join(f"{s}%" for s in steps) or "-"),
        ("interval", number(spec.get("interval_s"), "g", " s")),
        ("slo", text(", ".join(limits)) if limits else "none"),
        ("min requests", number(spec.get("min_requests"))),
        ("evidence timeout", number(spec.get("evidence_timeout_s"), "g", " s")),
        ("step started", iso_time(spec.get("step_started_at"))),
        ("updated", iso_time(d.get("updated_at"))),
        ("revision", text(d.get("revision"))),
    ]
    if spec.get("reason"):
        rows.append(("reason", text(spec["reason"])))
    window = d.get("window")
    if isinstance(window, dict):
        cells = _window_cells(window)
        rows.append(
            (
                "window",
                f"{cells[0]} requests, {cells[1]} errors, error rate {cells[2]}, "
                f"p99 {cells[3]} ms, agreement {cells[4]}",
            )
        )
    show(_pairs(rows))


# ------------------------------------------------------------------ history


def _routes(policy: Any) -> str:
    if not isinstance(policy, dict):
        return "policy removed"
    parts = [
        f"{_dict(r).get('version')}={_dict(r).get('weight')}" for r in _items(policy.get("routes"))
    ]
    shadow = _dict(policy.get("shadow"))
    if shadow:
        parts.append(f"shadow {shadow.get('version')}@{shadow.get('fraction')}")
    return " ".join(parts)


def change(detail: Any) -> str:
    """One line saying what an event changed, from its ``detail``."""
    d = _dict(detail)
    if "policy" in d:
        return _routes(d["policy"])
    if isinstance(d.get("canary"), dict):
        return f"version {d['canary'].get('version')}"
    if "version" in d:
        return f"version {d['version']}"
    if isinstance(d.get("id"), str):  # key.create, key.revoke
        return f"key {d['id']}" + (f" role {d['role']}" if d.get("role") else "")
    simple = [f"{k}={v}" for k, v in d.items() if isinstance(v, str | int | float | bool)]
    line = " ".join(simple)
    return line if len(line) <= 60 else line[:59] + "…"


def change_and_reason(event: dict[str, Any]) -> str:
    """What an event changed, then why in parentheses."""
    what = change(event.get("detail"))
    reason = event.get("reason")
    if reason:
        what = f"{what} ({reason})" if what else f"({reason})"
    return what


def history(data: Any, model: str | None) -> None:
    """``GET /history``: who changed what, when and why, newest first.

    For one model's history the model column is left out, leaving the room to
    what changed.
    """
    d = _dict(data)
    events = _items(d.get("events"))
    if not events:
        say(f"no changes to {model}" if model else "no changes")
        return
    columns = ["ID", "TIME", "MODEL", "ACTOR", "ACTION", "CHANGE (REASON)"]
    if model is not None:
        columns.remove("MODEL")
    grid = table(*columns, wide=["MODEL", "ACTOR", "CHANGE (REASON)"])
    for event in events:
        e = _dict(event)
        cells = [
            text(e.get("id")),
            iso_time(e.get("at")),
            text(e.get("model")),
            text(e.get("actor")),
            text(e.get("action")),
            text(change_and_reason(e)),
        ]
        if model is not None:
            del cells[2]
        grid.add_row(*cells)
    show(grid)
    if d.get("next_before") is not None:
        say(f"older changes: add --before {d['next_before']}")
