"""How much disk and time each part of modelport's install takes.

Builds a fresh virtual environment with the base package (what ``make serve``
installs), then, for each framework extra in ``pyproject.toml``, a copy of it
with that extra added, and reports the installed size of the base and what
each extra adds on top. Run from the checkout::

    python3 benchmarks/install_size.py [--extras sklearn torch] [--output FILE]

Sizes are of ``site-packages`` (what ``du`` counts, pip itself excluded), in
MB of 10^6 bytes; times are wall-clock seconds of the ``pip install``, which
depend on the package index and the machine's load.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Extras that bundle others or hold tools rather than a capability.
_AGGREGATES = {"all", "test", "dev"}


def _site_packages(venv: Path) -> Path:
    found = sorted((venv / "lib").glob("python3*/site-packages"))
    if not found:
        raise SystemExit(f"no site-packages under {venv}")
    return found[0]


def _size_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def _packages_size(venv: Path) -> int:
    site = _site_packages(venv)
    pip = sum(_size_bytes(p) for p in site.glob("pip*") if p.is_dir())
    return _size_bytes(site) - pip


def _pip(venv: Path, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *args],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def _extras() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    names = data["project"]["optional-dependencies"]
    return [name for name in names if name not in _AGGREGATES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", nargs="*", help="extras to measure (default: every one)")
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    extras = args.extras or _extras()

    lines = ["| install | adds (MB) | total (MB) | pip install (s) |", "|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(prefix="modelport-size-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run([sys.executable, "-m", "venv", str(base)], check=True)
        _pip(base, "--upgrade", "pip")
        seconds = _pip(base, "-e", str(ROOT))
        base_size = _packages_size(base)
        lines.append(
            f"| base (`pip install modelport`) | {base_size / 1e6:.0f} | "
            f"{base_size / 1e6:.0f} | {seconds:.0f} |"
        )
        print(lines[-1], flush=True)
        for extra in extras:
            venv = Path(tmp) / extra
            shutil.copytree(base, venv, symlinks=True)
            seconds = _pip(venv, "-e", f"{ROOT}[{extra}]")
            size = _packages_size(venv)
            lines.append(
                f"| `[{extra}]` | {(size - base_size) / 1e6:.0f} | {size / 1e6:.0f} | "
                f"{seconds:.0f} |"
            )
            print(lines[-1], flush=True)
            shutil.rmtree(venv)
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.output is not None:
        args.output.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
