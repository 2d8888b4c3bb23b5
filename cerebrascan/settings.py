"""One settings object for the whole server, read from the environment and an optional YAML file.

Precedence (highest first): constructor arguments, environment variables (``CEREBRASCAN_*``,
nested with ``__``, plus ``MLFLOW_TRACKING_URI``), the YAML file named by ``CEREBRASCAN_CONFIG``,
then the defaults below.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from cerebrascan.brain_extraction.settings import BrainExtractionSettings
from cerebrascan.classifiers.settings import ClassifierSettings
from cerebrascan.cohorts.settings import CohortSettings
from cerebrascan.inputs.dicom.settings import DicomSettings
from cerebrascan.inputs.settings import LimitSettings
from cerebrascan.longitudinal.settings import LongitudinalSettings
from cerebrascan.pacs.settings import PacsSettings
from cerebrascan.report.settings import ReportSettings
from cerebrascan.serving.settings import (
    AuthSettings,
    BatchingSettings,
    BoundSettings,
    GrpcSettings,
    HealthSettings,
    JobSettings,
    LogSettings,
    RetentionSettings,
)
from cerebrascan.views.settings import ViewSettings
from plugins.settings import NoGoSettings, PluginSettings
from runners.settings import RunnerSettings

S3_URL = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
"""An S3 location: ``s3://bucket[/prefix]`` with a valid bucket name."""


class StorageSettings(BaseModel):
    """S3 storage of versioned data (DVC remote) and MLflow artefacts (``docs/storage.md``).

    Credentials never live here: boto3 reads them from the environment, an instance role or
    ``~/.aws`` as usual.
    """

    model_config = {"extra": "forbid"}

    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 API endpoint for non-AWS stores (MinIO, Ceph, a local test server); "
        "None: AWS.",
    )
    s3_region: str | None = Field(default=None, description="Bucket region, e.g. eu-central-1.")
    dvc_remote_url: str | None = Field(
        default=None, description="DVC remote, e.g. s3://cerebrascan-data/dvc."
    )
    mlflow_artifact_root: str | None = Field(
        default=None,
        description="Artefact location of experiments this project creates, e.g. "
        "s3://cerebrascan-data/mlflow; None: a folder under data_dir.",
    )

    @field_validator("dvc_remote_url", "mlflow_artifact_root")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None and not S3_URL.match(value):
            raise ValueError(f"expected s3://bucket[/prefix], got {value!r}")
        return value


LEGACY_ENVIRONMENT: dict[str, tuple[str, str]] = {
    "CEREBRASCAN_NOGO_JUELICH_MOTOR": ("nogo", "juelich_motor"),
}
"""Documented variable names from before their section joined :class:`Settings` -> (section,
field). The nested name (``CEREBRASCAN_NOGO__JUELICH_MOTOR``) wins when both are set."""


class _LegacyEnvironmentSource(PydanticBaseSettingsSource):
    """Reads :data:`LEGACY_ENVIRONMENT` (below the nested variables, above the YAML file)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environment = {name.upper(): value for name, value in os.environ.items()}
        values: dict[str, Any] = {}
        for name, (section, key) in LEGACY_ENVIRONMENT.items():
            if name in environment:
                values.setdefault(section, {})[key] = environment[name]
        return values


class Settings(BaseSettings):
    """All configuration of a CerebraScan server or pipeline run."""

    model_config = SettingsConfigDict(
        env_prefix="CEREBRASCAN_",
        env_nested_delimiter="__",
        extra="forbid",
        protected_namespaces=(),
        populate_by_name=True,
    )

    data_dir: Path = Field(default=Path("data"), description="Root of local state.")
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CEREBRASCAN_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="MLflow tracking/registry URI; default: a sqlite file under data_dir.",
    )
    model_name: str = Field(default="cerebrascan-brats-unet", description="Registered model.")
    model_alias: str = Field(default="champion", description="Registry alias served.")
    bundled_model_dir: Path = Field(
        default=Path(__file__).resolve().parent.parent / "models" / "default",
        description="Folder of the committed default model (registered on first start).",
    )
    store_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the study store, e.g. postgresql+psycopg://user:pw@db/cs; "
        "default: a SQLite file under data_dir.",
    )
    patient_id_key: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="HMAC key: name-like patient ids are stored as its keyed hash (the same key "
        "on every server sharing a store); unset refuses them.",
    )
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    classifiers: ClassifierSettings = Field(default_factory=ClassifierSettings)
    longitudinal: LongitudinalSettings = Field(default_factory=LongitudinalSettings)
    nogo: NoGoSettings = Field(default_factory=NoGoSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    logging: LogSettings = Field(default_factory=LogSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    bounds: BoundSettings = Field(default_factory=BoundSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    cohorts: CohortSettings = Field(default_factory=CohortSettings)
    views: ViewSettings = Field(default_factory=ViewSettings)
    brain_extraction: BrainExtractionSettings = Field(default_factory=BrainExtractionSettings)
    pacs: PacsSettings = Field(default_factory=PacsSettings)

    @model_validator(mode="after")
    def _deidentification_key(self) -> Settings:
        # de-identified UIDs are keyed hashes: every worker needs the same secret
        if self.dicom.deidentify and self.patient_id_key is None:
            raise ValueError("dicom.deidentify needs patient_id_key (the key of the UID remapping)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            _LegacyEnvironmentSource(settings_cls),
        ]
        config_file = os.environ.get("CEREBRASCAN_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"CEREBRASCAN_CONFIG={config_file!r} is not a file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @property
    def tracking_uri(self) -> str:
        """The MLflow URI in force (explicit, or the sqlite file under ``data_dir``)."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow' / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        """Where MLflow stores artefacts of experiments this project creates."""
        return (self.data_dir / "mlflow" / "artifacts").resolve()

    @property
    def model_cache_dir(self) -> Path:
        """Where resolved registry artefacts are downloaded for serving."""
        return (self.data_dir / "model-cache").resolve()

    @property
    def engine_cache_dir(self) -> Path:
        """TensorRT engines and timing caches (``runner.engine_cache_dir`` or under data_dir)."""
        return (self.runner.engine_cache_dir or self.data_dir / "engine-cache").resolve()

    @property
    def studies_dir(self) -> Path:
        """Artefact folder of analysed studies (segmentations, results)."""
        return (self.data_dir / "studies").resolve()

    @property
    def store_database_url(self) -> str:
        """The study store URL in force (``store_url``, or the SQLite file under ``data_dir``)."""
        if self.store_url:
            return self.store_url
        return f"sqlite:///{(self.data_dir / 'store' / 'studies.sqlite3').resolve()}"

    def masked(self) -> dict[str, Any]:
        """Settings as a dict for logging, with credentials in URIs and secrets masked."""
        dumped = self.model_dump(mode="json")
        for name in ("mlflow_tracking_uri", "store_url"):
            uri = dumped.get(name)
            if uri and "@" in uri and "://" in uri:
                scheme, rest = uri.split("://", 1)
                dumped[name] = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
            if uri and "password=" in uri:
                dumped[name] = uri.split("?", 1)[0] + "?***"
        if dumped.get("patient_id_key") is not None:
            dumped["patient_id_key"] = "***"
        return dumped
