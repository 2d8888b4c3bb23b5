"""One settings object for the whole server, read from the environment and an optional YAML file.

Precedence (highest first): constructor arguments, environment variables (``CEREBRASCAN_*``,
nested with ``__``, plus ``MLFLOW_TRACKING_URI``), the YAML file named by ``CEREBRASCAN_CONFIG``,
then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from cerebrascan.settings_batching import BatchingSettings, GrpcSettings
from cerebrascan.settings_report import ReportSettings
from cerebrascan.settings_serving import (
    AuthSettings,
    JobSettings,
    LogSettings,
    StorageSettings,
)

ORT_PROVIDERS = (
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
)


class RunnerSettings(BaseModel):
    """How the segmentation network is executed."""

    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers, in order of preference.",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime intra-op threads; 0 lets ORT decide."
    )
    intra_op_spinning: bool = Field(
        default=True,
        description="Let ONNX Runtime's idle intra-op threads spin (busy-wait) between "
        "operators: faster alone, but spinning threads take CPU from concurrent work (other "
        "cases' preprocessing and analyzers).",
    )
    tile_batch_size: int = Field(default=2, ge=1, le=64, description="Tiles per network call.")
    tile_step: float = Field(
        default=0.5, gt=0.0, le=1.0, description="Sliding-window step as a fraction of the patch."
    )
    mirror_tta: bool = Field(default=False, description="Mirror test-time augmentation.")
    min_component_ml: float = Field(
        default=0.05,
        ge=0.0,
        description="Tumour islands smaller than this (mL) are removed; 0 keeps every voxel.",
    )
    engine: Literal["onnxruntime", "torch", "tensorrt"] = Field(
        default="onnxruntime",
        description="What executes the network: ONNX Runtime (with ``providers``), PyTorch "
        "(the model's safetensors weights) or native TensorRT (an engine built from the ONNX).",
    )
    device: str = Field(
        default="cpu",
        pattern=r"^(cpu|cuda(:\d+)?)$",
        description="Device of the torch and TensorRT engines: cpu, cuda or cuda:N.",
    )
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        default="fp32",
        description="Arithmetic of the network. Reduced precision is checked against fp32 on a "
        "reference tile when the engine is built and falls back to fp32 if they disagree.",
    )
    torch_compile: bool = Field(
        default=False, description="torch engine: compile the network with torch.compile."
    )
    engine_cache_dir: Path | None = Field(
        default=None,
        description="TensorRT engines and timing caches (both TensorRT paths); default: "
        "<data_dir>/engine-cache.",
    )
    precision_guard_min_agreement: float = Field(
        default=0.999,
        gt=0.0,
        le=1.0,
        description="Reduced precision is kept only if its argmax agrees with fp32 on at "
        "least this fraction of the reference tile's voxels.",
    )
    precision_guard_max_probability_difference: float = Field(
        default=0.1,
        gt=0.0,
        le=1.0,
        description="... and no probability differs from fp32 by more than this.",
    )

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("providers must name at least one ONNX Runtime execution provider")
        unknown = [p for p in value if p not in ORT_PROVIDERS]
        if unknown:
            raise ValueError(
                f"unknown execution provider(s) {unknown}; choose from {ORT_PROVIDERS}"
            )
        return value


class LimitSettings(BaseModel):
    """Bounds on what one request may make the server read and allocate."""

    max_upload_mb: float = Field(default=512.0, gt=0, description="Whole request body, in MB.")
    max_voxels: int = Field(
        default=400 * 400 * 400, gt=0, description="Voxels per image a header may declare."
    )


class PluginSettings(BaseModel):
    """Which analyzer plugins load and how they run (see ``docs/plugins.md``).

    ``allow`` and ``block`` name plugins: a built-in module's last dotted part (``volumetrics``)
    or a third-party entry point's name. A blocked or not-allowed third-party plugin is never
    imported. ``block`` wins over ``allow``.
    """

    model_config = {"extra": "forbid"}

    allow: list[str] | None = Field(
        default=None, description="Only these plugins load; None loads every installed one."
    )
    block: list[str] = Field(default_factory=list, description="Plugins that never load.")
    entry_points: bool = Field(
        default=True, description="Discover third-party plugins (entry-point group cerebrascan)."
    )
    trace: bool = Field(default=False, description="Log every hook call at DEBUG level.")
    timeouts: dict[str, float] = Field(
        default_factory=dict,
        description="Per-analyzer time limit in seconds, overriding the analyzer's timeout_s.",
    )

    @field_validator("allow", "block")
    @classmethod
    def _non_empty_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            bad = [name for name in value if not name.strip()]
            if bad:
                raise ValueError(f"plugin names must be non-empty, got {value}")
        return value

    @field_validator("timeouts")
    @classmethod
    def _positive_timeouts(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {name: seconds for name, seconds in value.items() if not seconds > 0}
        if bad:
            raise ValueError(f"analyzer timeouts must be > 0 seconds, got {bad}")
        return value


class LongitudinalSettings(BaseModel):
    """Volumetric response criteria and limits of the ``delta`` analyzer and the patient
    timeline (see ``docs/longitudinal.md`` for the defaults' sources)."""

    model_config = {"extra": "forbid"}

    response_region: Literal["ET", "TC", "WT"] = Field(
        default="ET",
        description="Region whose volume decides the response category (mRANO: enhancing).",
    )
    partial_response_change: float = Field(
        default=-0.65,
        gt=-1.0,
        lt=0.0,
        description="Relative volume change vs baseline at or below which a study is a partial "
        "response (-0.65: the volumetric equivalent of RANO's -50 % bidimensional product).",
    )
    progression_change: float = Field(
        default=0.40,
        gt=0.0,
        description="Relative volume change vs nadir at or above which a study is progression "
        "(+0.40: the volumetric equivalent of RANO's +25 % bidimensional product).",
    )
    complete_response_max_ml: float = Field(
        default=0.05,
        ge=0.0,
        description="Response-region volume (mL) at or below which the disease has disappeared.",
    )
    new_lesion_min_ml: float = Field(
        default=0.5,
        gt=0.0,
        description="Smallest new tumour component (mL, 26-connected whole tumour, away from "
        "every prior tumour) counted as a new lesion (a 10 mm sphere is 0.52 mL).",
    )
    new_lesion_margin_mm: float = Field(
        default=3.0,
        ge=0.0,
        description="A current component within this distance of the registered prior tumour "
        "is growth of that tumour, not a new lesion.",
    )
    max_priors: int = Field(
        default=20, ge=1, le=500, description="Earlier studies of a patient handed to analyzers."
    )
    registration_modality: Literal["t1n", "t1c", "t2w", "t2f"] = Field(
        default="t1n",
        description="Modality stored with each study and used to register visits.",
    )
    registration_spacing_mm: float = Field(
        default=2.0, gt=0.0, le=8.0, description="Grid of the rigid registration (mm)."
    )


class ClassifierSettings(BaseModel):
    """Tumour type / grade / IDH / MGMT classifiers (analyzers ``classification`` and
    ``radiogenomics``; research use only, trained on phantoms)."""

    model_config = {"extra": "forbid", "protected_namespaces": ()}

    model_names: dict[str, str] = Field(
        default_factory=lambda: {
            "tumour_type": "cerebrascan-tumour-type",
            "grade": "cerebrascan-grade",
            "idh": "cerebrascan-idh",
            "mgmt": "cerebrascan-mgmt",
        },
        description="Registered model name per task (tumour_type, grade, idh, mgmt).",
    )
    alias: str = Field(default="champion", description="Registry alias the analyzers load.")
    bundled_dir: Path = Field(
        default=Path(__file__).resolve().parent.parent / "models" / "classifiers",
        description="Folder of the committed classifiers (one sub-folder per task), registered "
        "by `cerebrascan registry ensure-default`.",
    )
    min_tumour_ml: float = Field(
        default=0.3, gt=0, description="Smaller whole tumours are answered 'not assessable'."
    )
    ood_threshold_scale: float = Field(
        default=1.0,
        gt=0,
        description="Multiplier of each model's out-of-distribution threshold (1: as trained).",
    )
    glioma_min_probability: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="radiogenomics answers IDH / MGMT only when P(glioma) reaches this.",
    )
    max_segmentation_uncertainty: float | None = Field(
        default=0.8,
        gt=0,
        description="Above this many voxels of uncertain (0.2-0.8) tumour probability per "
        "segmented tumour voxel the segmentation is taken to have failed and the tasks are "
        "'not assessable' (its features would not describe the tumour). 0.8: the largest "
        "value of a well-segmented (Dice >= 0.7) training case of the default model, rounded "
        "up (docs/classifiers.md); null disables the check.",
    )
    top_features: int = Field(
        default=5, ge=1, le=50, description="Contributing features listed per answer."
    )


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
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    classifiers: ClassifierSettings = Field(default_factory=ClassifierSettings)
    longitudinal: LongitudinalSettings = Field(default_factory=LongitudinalSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    logging: LogSettings = Field(default_factory=LogSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
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
