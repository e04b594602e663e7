"""Every shell and Python block in README.md and docs/*.md, run as written.

Which blocks: fences opened with ```bash, ```sh, ```shell or ```console (shell)
and ```python. A block is left out only when the line just before its fence
says why::

    <!-- docs-check: skip (serves until stopped) -->

and the test reports that reason as the skip. ``test_every_fence_is_run_or_says_why``
keeps new blocks honest: every fence names its language, and only the
languages above run, so a shell block cannot appear under a bare fence.

Grouping: each document is one sequence, as a reader follows one page. Its
blocks run in document order (pytest keeps parametrize order) in a working
directory of their own, so a later block sees what an earlier one made
(``audit export`` after the server wrote the log, a canary after the traffic
policy it steers), and no page depends on another. The directory is set up
as the docs assume: the checkout's files linked into it (``src/...`` sample
paths, ``examples/``, ``.venv``); ``models/`` holding the bundled examples
plus ``fraud`` (versions 1-3) and ``text_stats``, which the pages serve; and
for convert.md and optimize.md the model they name (``churn``, ``resnet``)
with ``rows.npz`` for ``--data``.

The server: the first block of a page that talks to one (``localhost:800x``,
``modelport models``/``deploy``/``audit``) starts ``modelport serve models``
there (what ``make serve`` runs, with the pages' models beside the bundled
ones) on the documented default ports 8000, 8001 and 8002, with the default
``./.modelport`` state, so commands and curl reach the state it keeps. It is
stopped when the page ends. When a default port is busy, such blocks are
skipped, naming it. Running one block alone (``-k``) works for blocks that
do not build on an earlier one of their page.

How blocks run: shell blocks by bash with ``set -eo pipefail``, ``.venv/bin``
first on PATH, and curl failing on an HTTP error status (``--fail-with-body``)
so a refused request fails the block. A console block runs each ``$``
command by itself. When a command's documented output is JSON (the lines
after a console command, or a ```json block right after a shell block), the
output must be that JSON, floats within 1e-4. Python blocks run with the
venv's python.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import Server, stop_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python"}
#: Languages that describe rather than do: never run.
INERT = {"yaml", "json", "text", "protobuf", "toml", "ini", "pbtxt", "csv", "diff", "http"}

DEFAULT_PORTS = (8000, 8001, 8002)
SKIP_MARK = re.compile(r"<!--\s*docs-check:\s*skip\s*\((?P<reason>[^)]*\S[^)]*)\)\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>\S*)\s*$")
BLOCK_TIMEOUT_S = 120


@dataclass
class Block:
    """One fenced block of a document."""

    doc: str  # relative to the checkout: README.md, docs/audit.md
    line: int  # the opening fence's line, 1-based
    lang: str
    text: str
    skip: str | None  # the reason given beside it, if any
    output: str | None = None  # a ```json block right after it: what it prints

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def parse(path: Path) -> list[Block]:
    """Every fenced block of ``path``, with skip reasons and documented output."""
    lines = path.read_text().splitlines()
    doc = str(path.relative_to(ROOT))
    blocks: list[Block] = []
    i = 0
    last_end = -2
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        end = next(
            (j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"),
            len(lines),
        )
        before = lines[i - 1] if i > 0 else ""
        mark = SKIP_MARK.search(before)
        reason = mark["reason"] if mark else None
        block = Block(doc, i + 1, opened["lang"], "\n".join(lines[i + 1 : end]), reason)
        previous = blocks[-1] if blocks else None
        if (
            previous is not None
            and block.lang == "json"
            and previous.lang in SHELL - {"console"}
            and all(not line.strip() for line in lines[last_end + 1 : i])
        ):
            previous.output = block.text
        blocks.append(block)
        last_end = end
        i = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOCS for block in parse(path)]
RUNNABLE = [b for b in ALL_BLOCKS if b.lang in SHELL | PYTHON]


def test_every_fence_is_run_or_says_why() -> None:
    unknown = [
        f"{b.id}: ```{b.lang or '(no language)'}"
        for b in ALL_BLOCKS
        if b.lang not in SHELL | PYTHON | INERT
    ]
    assert not unknown, (
        "name each fence's language: a shell or python block runs in test_docs, "
        f"anything else must be one of {sorted(INERT)}: {unknown}"
    )
    assert len(RUNNABLE) >= 10  # the parser still finds the blocks
    runnable_at = {(b.doc, b.line) for b in RUNNABLE}
    stray = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in DOCS
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if "docs-check" in line
        and (not SKIP_MARK.search(line) or (str(path.relative_to(ROOT)), n + 1) not in runnable_at)
    ]
    assert not stray, (
        "a docs-check mark is `<!-- docs-check: skip (reason) -->` on the line just "
        f"before a shell or python fence; these are not: {stray}"
    )


# --- the working directory the docs assume -------------------------------------------------


BUNDLED = ROOT / "src" / "modelport" / "examples" / "models"


def build_models(root: Path) -> Path:
    """``models/``: the bundled examples, and ``fraud`` and ``text_stats`` the pages serve."""
    models = root / "models"
    for name in ("breast_cancer", "digits"):
        shutil.copytree(BUNDLED / name, models / name)
    (models / "fraud").mkdir()
    shutil.copy(BUNDLED / "breast_cancer" / "config.yaml", models / "fraud" / "config.yaml")
    for version in ("1", "2", "3"):
        shutil.copytree(BUNDLED / "breast_cancer" / "1", models / "fraud" / version)
    shutil.copytree(ROOT / "examples" / "custom_python" / "text_stats", models / "text_stats")
    return models


def churn_and_rows(workdir: Path) -> None:
    """convert.md's ``models/churn/1``: a scikit-learn model, and ``rows.npz`` for it."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from skops import io as sio

    cancer = load_breast_cancer()
    churn = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    (workdir / "models" / "churn" / "1").mkdir(parents=True)
    sio.dump(churn.fit(cancer.data, cancer.target), workdir / "models/churn/1/model.skops")
    np.savez(workdir / "rows.npz", input=cancer.data.astype(np.float32))


def resnet_and_rows(workdir: Path) -> None:
    """optimize.md's ``models/resnet/1``: an ONNX image classifier, and ``rows.npz``."""
    from sklearn.datasets import load_digits

    shutil.copytree(BUNDLED / "digits", workdir / "models" / "resnet")
    np.savez(workdir / "rows.npz", image=load_digits().data[:512].astype(np.float32))


#: What a page assumes beyond ``models/``: its own model and rows for ``--data rows.npz``.
PAGE_SETUP = {"docs/convert.md": churn_and_rows, "docs/optimize.md": resnet_and_rows}

#: Blocks that talk to a running server (or read the state it keeps); a page's
#: server starts with the first of them, and pages without one start none.
NEEDS_SERVER = re.compile(r"(localhost|127\.0\.0\.1):800[0-2]|modelport (models|deploy|audit)\b")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_models(tmp_path_factory.mktemp("docs-models"))


def make_workdir(root: Path, models: Path, doc: str) -> Path:
    """The checkout as ``doc`` sees it, with ``models/`` and its own setup, under ``root``."""
    root.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name not in {".git", ".modelport", "models", "rows.npz"}:
            (root / entry.name).symlink_to(entry)
    shutil.copytree(models, root / "models")
    if doc in PAGE_SETUP:
        PAGE_SETUP[doc](root)
    return root


def environment(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env["PATH"] = f"{workdir / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def ports_busy() -> list[int]:
    busy = []
    for port in DEFAULT_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def serve(workdir: Path) -> Server:
    """``modelport serve models`` in ``workdir`` on the default ports, once ready."""
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(workdir / ".venv" / "bin" / "modelport"), "serve", "models"],
            cwd=workdir,
            env=environment(workdir),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, *DEFAULT_PORTS, workdir / "models", log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base}/v2/health/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server not ready in 60 s:\n{server.log()}")


@dataclass
class Sequence:
    """The page being run: its working directory, and its server once a block needs it."""

    doc: str
    workdir: Path
    server: Server | None = None


@dataclass
class Pages:
    """Sets each page up when its first block runs, and ends the page before."""

    root: Path
    models: Path
    current: Sequence | None = None

    def enter(self, block: Block) -> Sequence:
        if self.current is None or self.current.doc != block.doc:
            self.close()
            workdir = make_workdir(self.root / block.doc.replace("/", "_"), self.models, block.doc)
            self.current = Sequence(block.doc, workdir)
        page = self.current
        if page.server is None and NEEDS_SERVER.search(block.text):
            busy = ports_busy()
            if busy:
                pytest.skip(f"{block.id} needs the documented default ports free; busy: {busy}")
            page.server = serve(page.workdir)
        return page

    def close(self) -> None:
        if self.current is not None and self.current.server is not None:
            stop_server(self.current.server)
        self.current = None


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Iterator[Pages]:
    running = Pages(tmp_path_factory.mktemp("docs"), models)
    yield running
    running.close()


# --- running blocks -----------------------------------------------------------------------

SHELL_PREAMBLE = """set -eo pipefail
curl() { command curl --fail-with-body "$@"; }
"""


def console_commands(text: str) -> list[tuple[str, str]]:
    """``(command, documented output)`` for each ``$`` line of a console block."""
    found: list[tuple[str, str]] = []
    command: list[str] = []
    output: list[str] = []

    def complete(lines: list[str]) -> bool:
        joined = "\n".join(lines)
        if joined.endswith("\\"):
            return False
        try:
            shlex.split(joined)
        except ValueError:  # an open quote: the command goes on
            return False
        return True

    for line in text.splitlines():
        if command and not complete(command):
            command.append(line)
            continue
        if line.startswith("$ "):
            if command:
                found.append(("\n".join(command), "\n".join(output)))
            command, output = [line[2:]], []
        else:
            output.append(line)
    if command:
        found.append(("\n".join(command), "\n".join(output)))
    return found


def same_json(got: Any, want: Any) -> bool:
    if isinstance(want, float) or isinstance(got, float):
        return (
            isinstance(got, (int, float))
            and isinstance(want, (int, float))
            and math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6)
        )
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(same_json(got[k], want[k]) for k in want)
        )
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(same_json(g, w) for g, w in zip(got, want, strict=True))
        )
    return bool(got == want)


def documented_json(output: str) -> Any | None:
    try:
        return json.loads(output) if output.strip() else None
    except json.JSONDecodeError:
        return None  # prose-like output (counts, tables): shown, not compared


def run(args: list[str], workdir: Path, what: str) -> str:
    try:
        done = subprocess.run(
            args,
            cwd=workdir,
            env=environment(workdir),
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{what} did not finish in {BLOCK_TIMEOUT_S} s; output so far:\n{e.stdout!r}")
    assert done.returncode == 0, (
        f"{what} exited {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    return done.stdout


def check_output(what: str, stdout: str, expected: str | None) -> None:
    want = documented_json(expected or "")
    if want is None:
        return
    try:
        got = json.loads(stdout)
    except json.JSONDecodeError:
        pytest.fail(f"{what}: documented JSON output, got:\n{stdout}")
    assert same_json(got, want), f"{what}: printed\n{stdout}\nthe page shows\n{expected}"


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_block_runs_as_written(block: Block, pages: Pages) -> None:
    if block.skip is not None:
        pytest.skip(f"{block.id}: docs-check: skip ({block.skip})")
    page = pages.enter(block)
    workdir = page.workdir
    if block.lang in PYTHON:
        script = workdir / f"block_{block.line}.py"
        script.write_text(block.text + "\n")
        run([str(workdir / ".venv" / "bin" / "python"), str(script)], workdir, block.id)
    elif block.lang == "console":
        for command, expected in console_commands(block.text):
            stdout = run(
                ["bash", "-c", SHELL_PREAMBLE + command], workdir, f"{block.id}: $ {command}"
            )
            check_output(f"{block.id}: $ {command}", stdout, expected)
    else:
        stdout = run(["bash", "-c", SHELL_PREAMBLE + block.text], workdir, block.id)
        check_output(block.id, stdout, block.output)
    if page.server is not None:
        assert page.server.alive(), f"the server stopped during {block.id}:\n{page.server.log()}"
