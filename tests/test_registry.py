"""The MLflow registry (real sqlite store): register, alias, resolve, checksum."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cerebrascan.registry import (
    ModelNotAvailableError,
    check_model_folder,
    ensure_default_model,
    register_model_folder,
    resolve_model,
)
from cerebrascan.settings import Settings


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "state", model_name="test-model")


def test_bundled_model_folder_is_complete() -> None:
    spec = check_model_folder(Settings().bundled_model_dir)
    assert spec.modalities == ["t1n", "t1c", "t2w", "t2f"]
    card = (Settings().bundled_model_dir / "model_card.md").read_text().lower()
    assert "phantom" in card and "research" in card


def test_ensure_default_registers_once_and_resolves(settings: Settings) -> None:
    first = ensure_default_model(settings)
    second = ensure_default_model(settings)
    assert first == second == "1"
    resolved = resolve_model(settings)
    assert resolved.version == "1"
    assert resolved.alias == "champion"
    assert (
        resolved.onnx_path.read_bytes() == (settings.bundled_model_dir / "model.onnx").read_bytes()
    )
    assert resolved.training_data.startswith("phantoms")


def test_new_version_moves_the_alias(settings: Settings, tmp_path: Path) -> None:
    ensure_default_model(settings)
    copy = tmp_path / "copy"
    shutil.copytree(settings.bundled_model_dir, copy)
    version = register_model_folder(settings, copy, name="test-model", alias="champion")
    assert version == "2"
    assert resolve_model(settings).version == "2"


def test_missing_alias_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(ModelNotAvailableError, match="has no test-model@champion"):
        resolve_model(settings)


def test_incomplete_folder_is_refused_and_nothing_registered(
    settings: Settings, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(settings.bundled_model_dir, broken)
    (broken / "model_spec.json").unlink()
    with pytest.raises(ModelNotAvailableError, match="lacks"):
        register_model_folder(settings, broken, name="test-model", alias="champion")
    with pytest.raises(ModelNotAvailableError):
        resolve_model(settings)


def test_tampered_cache_is_downloaded_again(settings: Settings) -> None:
    ensure_default_model(settings)
    resolved = resolve_model(settings)
    resolved.onnx_path.write_bytes(b"corrupt")
    again = resolve_model(settings)
    assert again.onnx_path.read_bytes() == (settings.bundled_model_dir / "model.onnx").read_bytes()
