"""Every setting of :class:`cerebrascan.settings.Settings`: its environment name, key and default.

The names follow the model's pydantic-settings configuration (``env_prefix`` and
``env_nested_delimiter``), the extra names its fields accept (``validation_alias``) and the
older flat names of :data:`cerebrascan.settings.LEGACY_ENVIRONMENT`, so the docs name exactly
the variables the server reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from cerebrascan.settings import LEGACY_ENVIRONMENT, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SettingRow:
    """One leaf setting.

    Args:
        key: dotted key in the YAML file, e.g. ``batching.remote_runner``.
        env: the environment variable, e.g. ``CEREBRASCAN_BATCHING__REMOTE_RUNNER``.
        other_env: other variable names the server also reads for it.
        default: the model's default value (a factory is called).
        description: the field's description.
    """

    key: str
    env: str
    other_env: tuple[str, ...]
    default: Any
    description: str


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model class if ``annotation`` is a (non-optional) pydantic model, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def field_default(info: FieldInfo) -> Any:
    """A field's default, its factory called; PydanticUndefined for a required field."""
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def _alias_names(info: FieldInfo) -> tuple[str, ...]:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(choice for choice in alias.choices if isinstance(choice, str))
    if isinstance(alias, str):
        return (alias,)
    return ()


def setting_rows(model: type[BaseModel] = Settings) -> list[SettingRow]:
    """Every leaf setting of ``model`` (sections followed), in declaration order."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    delimiter = str(Settings.model_config.get("env_nested_delimiter", "__"))
    legacy = {(section, key): name for name, (section, key) in LEGACY_ENVIRONMENT.items()}
    rows: list[SettingRow] = []

    def walk(current: type[BaseModel], path: tuple[str, ...]) -> None:
        for name, info in current.model_fields.items():
            section = _section_model(info.annotation)
            if section is not None:
                walk(section, (*path, name))
                continue
            keys = (*path, name)
            env = prefix + delimiter.join(keys).upper()
            others = [alias for alias in _alias_names(info) if alias.upper() != env]
            if len(keys) == 2 and (keys[0], keys[1]) in legacy:
                others.append(legacy[(keys[0], keys[1])])
            rows.append(
                SettingRow(
                    key=".".join(keys),
                    env=env,
                    other_env=tuple(others),
                    default=field_default(info),
                    description=" ".join((info.description or "").split()),
                )
            )

    walk(model, ())
    return rows


def display_default(value: Any) -> str:
    """How the reference table writes a default (and what the docs must state for it)."""
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, Path):
        if value.is_absolute() and value.is_relative_to(REPO_ROOT):
            return str(value.relative_to(REPO_ROOT))
        return str(value)
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json"))
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def stated_default_matches(stated: str, value: Any) -> bool:
    """Whether a default as written in the docs is the model's ``value``.

    The rule (docs/README.md): backticks and a trailing parenthetical are ignored; unset,
    none and null mean None; on/off are true/false; numbers compare as numbers; lists and
    mappings as JSON; a path as the path relative to the repository; text exactly.
    """
    text = stated.strip().strip("`").strip()
    if text.endswith(")") and " (" in text:
        text = text[: text.index(" (")].strip().strip("`")
    lowered = text.lower()
    if value is None:
        return lowered in ("unset", "none", "null")
    if isinstance(value, bool):
        return lowered in (("true", "on") if value else ("false", "off"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        cleaned = text.replace("_", "").replace(",", "")
        return _is_number(cleaned) and float(cleaned) == float(value)
    if isinstance(value, (list, tuple, dict)):
        try:
            return bool(json.loads(text) == json.loads(json.dumps(value, default=str)))
        except ValueError:
            return False
    if isinstance(value, Path):
        return text == display_default(value)
    if isinstance(value, Enum):
        return text == str(value.value)
    if isinstance(value, str):
        return text == value or (value == "" and text in ('""', "''"))
    return text == display_default(value)
