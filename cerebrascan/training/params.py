"""Typed view of ``params.yaml``, the knobs of the DVC pipeline."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, field_validator

from cerebrascan.phantoms.tumour_types import check_type_probs


class PhantomStageParams(BaseModel):
    """How many phantom cases to make for training and held-out evaluation."""

    train_seed: int = 1000
    train_cases: int = Field(default=60, ge=1)
    test_seed: int = 2000
    test_cases: int = Field(default=10, ge=1)
    type_probs: dict[str, float] | None = Field(
        default=None,
        description="None: generic glioma-like phantoms only; else the weight of each tumour "
        "type ('generic' or a name of cerebrascan.phantoms.tumour_types) in both cohorts.",
    )

    @field_validator("type_probs")
    @classmethod
    def _known_types(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            check_type_probs(value)
        return value


class ModelParams(BaseModel):
    """Network shape and its input grid."""

    features: list[int] = Field(default_factory=lambda: [12, 24, 48, 96])
    patch_size: tuple[int, int, int] = (64, 64, 64)
    target_spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)


class TrainParams(BaseModel):
    """Optimisation settings."""

    seed: int = 0
    iterations: int = Field(default=2000, ge=1)
    batch_size: int = Field(default=2, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    foreground_fraction: float = Field(default=0.67, ge=0, le=1)
    threads: int = Field(default=2, ge=1)
    time_limit_minutes: float = Field(default=40.0, gt=0)
    log_every: int = Field(default=50, ge=1)


class EvaluateParams(BaseModel):
    """Inference settings used for held-out evaluation."""

    tile_step: float = 0.5
    mirror_tta: bool = False
    min_component_ml: float = Field(default=0.05, ge=0)
    official_metrics: bool = Field(
        default=True,
        description="Also score with the official brats-evaluation package (lesion-wise).",
    )
    official_metrics_python: str = Field(
        default=".venv-brats/bin/python",
        description="Interpreter of the venv holding brats-evaluation (`make brats-metrics`); "
        "relative to the project root.",
    )


class PrecisionsParams(BaseModel):
    """The held-out check of reduced precisions (``cerebrascan pipeline precisions``)."""

    held_out_cases: int | None = Field(
        default=4,
        ge=1,
        description="The first N held-out cases are segmented in fp32 and each reduced "
        "precision (None: all of them).",
    )
    max_dice_change: float = Field(
        default=0.005,
        gt=0,
        le=1,
        description="The bound recorded as passed / failed (the runner re-checks the recorded "
        "changes against runner.precision_guard_max_dice_change).",
    )


class PipelineParams(BaseModel):
    """All of ``params.yaml``."""

    phantoms: PhantomStageParams = Field(default_factory=PhantomStageParams)
    model: ModelParams = Field(default_factory=ModelParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    precisions: PrecisionsParams = Field(default_factory=PrecisionsParams)


def load_params(path: Path) -> PipelineParams:
    """Parse and validate a params file."""
    return PipelineParams.model_validate(yaml.safe_load(path.read_text()) or {})
