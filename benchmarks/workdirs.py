"""Where the benchmark runners keep their work: one ``.work`` folder beside them.

run.py and compare.py share these paths, so a comparison and a full run
read and write the same bodies, logs and raw output folders.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
RAW = WORK / "raw"
LOGS = WORK / "logs"
BODIES = WORK / "bodies"
SERVE = WORK / "serve"
PYTHON = sys.executable
