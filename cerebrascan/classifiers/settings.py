"""Settings of the served tumour classifiers (``classifiers``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


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
        default=Path(__file__).resolve().parents[2] / "models" / "classifiers",
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
