"""The ``classifiers`` section of ``params.yaml``: the knobs of the classifier pipeline's stages."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from cerebrascan.classifiers.cohort import CohortSpec
from cerebrascan.classifiers.feature_stage import FeatureSource


class ModelStageParams(BaseModel):
    """Training knobs."""

    seed: int = 0
    c: dict[str, float] = Field(
        default_factory=lambda: {"tumour_type": 0.2, "grade": 0.05, "idh": 0.05, "mgmt": 0.02}
    )
    ood_variance: float = Field(default=0.9, gt=0, lt=1)
    ood_quantile: float = Field(default=0.95, gt=0.5, lt=1)
    classifier_features: FeatureSource = Field(
        default="predicted",
        description="Segmentation the classifiers learn features from: 'predicted' (the "
        "default model's, as served) or 'truth' (the phantoms' ground truth).",
    )
    ood_features: FeatureSource = Field(
        default="truth",
        description="Segmentation the OOD check learns the training distribution from.",
    )


class ClassifierParams(BaseModel):
    """The ``classifiers`` section of ``params.yaml``."""

    train: CohortSpec
    test: CohortSpec
    shifted: CohortSpec
    shifted_protocol: CohortSpec
    shifted_confirmation: CohortSpec
    workers: int = Field(default=2, ge=1)
    model: ModelStageParams = Field(default_factory=ModelStageParams)


def load_classifier_params(path: Path) -> ClassifierParams:
    """Parse the ``classifiers`` section of a params file.

    Args:
        path: the params file (``params.yaml``).

    Returns:
        The validated section.

    Raises:
        ValueError: the section is missing or invalid.
    """
    data = yaml.safe_load(path.read_text()) or {}
    if "classifiers" not in data:
        raise ValueError(f"{path} has no 'classifiers' section")
    return ClassifierParams.model_validate(data["classifiers"])
