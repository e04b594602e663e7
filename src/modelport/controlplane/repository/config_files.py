"""Reading a model's configuration: config.yaml, or Triton's config.pbtxt.

Both become the same validated ModelConfig; every error names the file and
the field.
"""

from __future__ import annotations

from typing import Any

import yaml

from modelport.config.model import ModelConfig, parse_model_config
from modelport.controlplane.repository.layout import ModelSource
from modelport.errors import ConfigError


def read_model_config(source: ModelSource, override: dict[str, Any] | None = None) -> ModelConfig:
    """The model's config from its file (or ``override``), name filled in."""
    origin = "load request config"
    data: Any
    if override is not None:
        data = override
    elif source.config_file is None:
        data = {}
        origin = str(source.path)
    else:
        origin = str(source.config_file)
        try:
            text = source.config_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(origin, "", f"cannot read: {exc}") from None
        if source.config_file.suffix == ".pbtxt":
            from modelport.config.pbtxt import read_pbtxt

            data = read_pbtxt(text, origin)
        else:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(origin, "", f"invalid YAML: {exc}") from None
    config = parse_model_config(data, origin)
    if config.name and config.name != source.name:
        raise ConfigError(
            origin, "name", f"{config.name!r} differs from the directory name {source.name!r}"
        )
    return config.model_copy(update={"name": source.name})
