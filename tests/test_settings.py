"""Settings from environment and YAML; invalid values stop with a message naming them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from cerebrascan.settings import Settings


def test_environment_and_nested_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEREBRASCAN_RUNNER__TILE_BATCH_SIZE", "4")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
    settings = Settings()
    assert settings.runner.tile_batch_size == 4
    assert settings.tracking_uri == "sqlite:////tmp/x.db"


def test_yaml_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model_alias: challenger\nrunner:\n  mirror_tta: true\n")
    monkeypatch.setenv("CEREBRASCAN_CONFIG", str(config))
    settings = Settings()
    assert settings.model_alias == "challenger"
    assert settings.runner.mirror_tta is True


def test_default_tracking_uri_is_sqlite_under_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"


def test_unknown_provider_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEREBRASCAN_RUNNER__PROVIDERS", '["CUDAExecutionProvider", "FooEP"]')
    with pytest.raises(ValidationError, match="FooEP"):
        Settings()


def test_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEREBRASCAN_CONFIG", "/nonexistent/cfg.yaml")
    with pytest.raises(FileNotFoundError, match=re.escape("/nonexistent/cfg.yaml")):
        Settings()


def test_secrets_in_uri_are_masked() -> None:
    settings = Settings(mlflow_tracking_uri="postgresql://user:secret@db:5432/mlflow")
    assert "secret" not in str(settings.masked())


def test_plugin_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEREBRASCAN_PLUGINS__BLOCK", '["hotspot"]')
    monkeypatch.setenv("CEREBRASCAN_PLUGINS__TRACE", "true")
    monkeypatch.setenv("CEREBRASCAN_PLUGINS__TIMEOUTS", '{"volumetrics": 5}')
    plugins = Settings().plugins
    assert plugins.block == ["hotspot"]
    assert plugins.allow is None
    assert plugins.trace is True
    assert plugins.timeouts == {"volumetrics": 5.0}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CEREBRASCAN_PLUGINS__TIMEOUTS", '{"volumetrics": 0}', "'volumetrics': 0"),
        ("CEREBRASCAN_PLUGINS__ALLOW", '["volumetrics", " "]', "plugin names must be non-empty"),
        ("CEREBRASCAN_PLUGINS__BLOK", '["x"]', "blok"),
    ],
)
def test_bad_plugin_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings()


def test_nogo_section_reads_its_documented_and_nested_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().nogo.juelich_motor is False
    monkeypatch.setenv("CEREBRASCAN_NOGO_JUELICH_MOTOR", "true")  # the name docs gave before
    assert Settings().nogo.juelich_motor is True
    monkeypatch.setenv("CEREBRASCAN_NOGO__JUELICH_MOTOR", "false")  # the nested name wins
    assert Settings().nogo.juelich_motor is False
