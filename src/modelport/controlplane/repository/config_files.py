"""Reading a model's configuration: config.yaml, or Triton's config.pbtxt.

Both become the same validated ModelConfig; every error names the file and
the field. A load request's config (Triton's ``config`` parameter) stands in
for the file's serving knobs only (``override.TUNABLE``); everything else
still comes from the file.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from modelport.config.model import ModelConfig, parse_model_config
from modelport.controlplane.repository.autoconfig import choose_backend
from modelport.controlplane.repository.layout import ModelSource
from modelport.controlplane.repository.override import apply_override
from modelport.errors import ConfigError, ModelportError

#: How a load request's config is named in errors.
REQUEST_ORIGIN = "load request config"


def read_model_config(source: ModelSource, override: dict[str, Any] | None = None) -> ModelConfig:
    """The model's config from its file (or ``override``), name filled in.

    With ``override``, the repository's own config must be valid too: all
    but the serving knobs are taken from it. InvalidRequest when the
    override gives one of those another value. An override may ask for as
    many instances as the machine has cores (more only adds memory), or as
    many as the repository's config does.
    """
    own = _named(source, *_own_config(source))
    if override is None:
        return own
    requested = _named(source, parse_model_config(override, REQUEST_ORIGIN), REQUEST_ORIGIN)

    def derived(field: str) -> set[str]:
        values = set()
        for version_dir in source.versions.values():
            try:
                values.add(getattr(choose_backend(own, REQUEST_ORIGIN, version_dir), field))
            except ModelportError:
                continue
        return values

    return apply_override(requested, own, derived, max_instances=os.cpu_count() or 1)


def _own_config(source: ModelSource) -> tuple[ModelConfig, str]:
    data: Any
    if source.config_file is None:
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
    return parse_model_config(data, origin), origin


def _named(source: ModelSource, config: ModelConfig, origin: str) -> ModelConfig:
    if config.name and config.name != source.name:
        raise ConfigError(
            origin, "name", f"{config.name!r} differs from the directory name {source.name!r}"
        )
    return config.model_copy(update={"name": source.name})
