"""Progress lines and the number formats shared by every report table."""

from __future__ import annotations

import time
from pathlib import Path

#: A run during which unrelated processes used this share of the CPU is flagged.
OTHER_CPU_WARN = 0.05


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def fmt_num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_pct(share: float | None) -> str:
    """A CPU share as a percentage, marked ``(!)`` from OTHER_CPU_WARN up."""
    if share is None:
        return "-"
    flag = " (!)" if share >= OTHER_CPU_WARN else ""
    return f"{share * 100:.0f}%{flag}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    return f"{a / b:.3g}"


def write_section(path: Path, heading: str, text: str) -> None:
    """Put ``text`` (starting with ``heading``) in ``path``, replacing an earlier one."""
    current = path.read_text() if path.exists() else ""
    start = current.find(heading)
    if start < 0:
        path.write_text(current.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")
        return
    end = current.find("\n## ", start + len(heading))
    rest = current[end + 1 :] if end >= 0 else ""
    path.write_text(current[:start] + text.rstrip("\n") + "\n" + ("\n" + rest if rest else ""))
