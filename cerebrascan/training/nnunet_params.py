"""Typed view of the ``segmentation`` and ``nnunet`` sections of ``params.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, field_validator

from cerebrascan.training.nnunet_dataset import dataset_folder_name


class SegmentationParams(BaseModel):
    """Which trainer's model the pipeline makes the served champion."""

    trainer: Literal["cerebrascan", "nnunet"] = Field(
        default="cerebrascan",
        description="cerebrascan: `dvc repro` (dvc.yaml) trains the default model; nnunet: the "
        "nnU-Net stages (pipelines/nnunet/dvc.yaml) register theirs as the served model.",
    )


class NnunetParams(BaseModel):
    """The nnU-Net pipeline: dataset, planning, training and where the model goes."""

    cases: Path = Field(
        default=Path("data/phantoms/train"),
        description="BraTS 2023-style training folder (<case>/<case>-t1n.nii.gz ... -seg).",
    )
    test_cases: Path = Field(
        default=Path("data/phantoms/test"), description="Held-out cases for the evaluate stage."
    )
    downsample: int = Field(
        default=3, ge=1, le=4, description="Block size the cases are averaged over (1: as is)."
    )
    dataset_id: int = Field(default=501, ge=1, le=999)
    dataset_name: str = "CerebraScanPhantoms"
    configuration: str = "3d_fullres"
    planner: str = Field(
        default="ExperimentPlanner", description="nnUNetv2_plan_and_preprocess -pl"
    )
    plans: str = Field(default="nnUNetPlans", description="plans identifier the planner writes")
    trainer: str = Field(
        default="nnUNetTrainer_CerebraScanShort",
        description="nnU-Net trainer class: nnUNetTrainer for a real run, or a class of "
        "cerebrascan.training.nnunet_trainers",
    )
    folds: list[str] = Field(default_factory=lambda: ["all"], min_length=1)
    device: Literal["cpu", "cuda", "mps"] = "cpu"
    preprocess_processes: int = Field(default=1, ge=1)
    verify_dataset_integrity: bool = Field(
        default=False,
        description="nnUNetv2_plan_and_preprocess --verify_dataset_integrity (minutes on a "
        "loaded 2-core machine even for 3 phantoms; worth it for a real dataset)",
    )
    augmentation_processes: int = Field(
        default=0, ge=0, description="nnUNet_n_proc_DA (0: augment in the training process)"
    )
    model_name: str = Field(
        default="cerebrascan-nnunet",
        description="Registered name while segmentation.trainer is not nnunet.",
    )

    @field_validator("folds", mode="before")
    @classmethod
    def _folds_as_text(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return [str(v) for v in value]
        return value

    @field_validator("folds")
    @classmethod
    def _known_folds(cls, value: list[str]) -> list[str]:
        bad = [f for f in value if f != "all" and not f.isdigit()]
        if bad:
            raise ValueError(f"folds must be 'all' or fold numbers, got {bad}")
        return value

    @property
    def dataset_folder(self) -> str:
        """``DatasetXXX_Name``."""
        return dataset_folder_name(self.dataset_id, self.dataset_name)

    @property
    def results_subfolder(self) -> str:
        """nnU-Net's ``Trainer__Plans__Configuration`` folder name."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"


class NnunetPipelineParams(BaseModel):
    """The sections of ``params.yaml`` the nnU-Net stages read (the rest is ignored)."""

    segmentation: SegmentationParams = Field(default_factory=SegmentationParams)
    nnunet: NnunetParams = Field(default_factory=NnunetParams)


def load_nnunet_params(path: Path) -> NnunetPipelineParams:
    """Parse and validate the nnU-Net sections of a params file."""
    return NnunetPipelineParams.model_validate(yaml.safe_load(path.read_text()) or {})
