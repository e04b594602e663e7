"""text_stats: the length of each text in characters, and its number of words.

A modelport custom Python model: ``Model.load`` runs once per instance when
the server loads the version, ``Model.predict`` runs once per batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from modelport.config.model import ModelConfig


class Model:
    def load(self, version_dir: Path, config: ModelConfig) -> None:
        # Read weights, vocabularies ... from version_dir here; this model has none.
        self.encoding = "utf-8"

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # A batch of N texts arrives as an object array of bytes, shape [N, 1].
        texts = [t.decode(self.encoding, errors="replace") for t in inputs["text"][:, 0]]
        length = np.array([len(t) for t in texts], dtype=np.int64).reshape(-1, 1)
        words = np.array([len(t.split()) for t in texts], dtype=np.int64).reshape(-1, 1)
        return {"length": length, "words": words}
