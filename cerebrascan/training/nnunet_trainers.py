"""nnU-Net trainer variants of this project, and the trainer lookup by class name.

nnU-Net finds a trainer by class name inside ``nnunetv2.training.nnUNetTrainer`` (then in the
``nnUNet_extTrainer`` folders). That scan imports every trainer module of nnunetv2, some of
which need optional packages, and cannot see this package; so the project's trainers are run by
``python -m cerebrascan.training.nnunet_train_entry`` and found by :func:`find_trainer_class`,
which asks nnU-Net only for names that are not the project's. Nothing goes into site-packages.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

SHORT_PATCH = [32, 32, 32]
SHORT_FEATURES = [8, 16, 32]


def shrink_configuration(plans: dict[str, Any], configuration: str) -> dict[str, Any]:
    """A copy of ``plans`` whose ``configuration`` trains a 3-stage, 8-32 feature U-Net on
    32^3 patches, batch 2. Spacing, normalisation and resampling stay as planned, so the
    preprocessed data still fit."""
    shrunk = copy.deepcopy(plans)
    config = shrunk["configurations"][configuration]
    if len(config["patch_size"]) != 3:
        raise ValueError(f"configuration {configuration!r} is not 3D: {config['patch_size']}")
    config["patch_size"] = list(SHORT_PATCH)
    config["batch_size"] = 2
    stages = len(SHORT_FEATURES)
    config["architecture"]["arch_kwargs"].update(
        n_stages=stages,
        features_per_stage=list(SHORT_FEATURES),
        kernel_sizes=[[3, 3, 3]] * stages,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
        n_conv_per_stage=[1] * stages,
        n_conv_per_stage_decoder=[1] * (stages - 1),
    )
    return shrunk


class nnUNetTrainer_CerebraScanShort(nnUNetTrainer):  # type: ignore[misc]  # noqa: N801
    """Two epochs of five training and two validation iterations on a shrunk configuration,
    no final validation.

    For the end-to-end test of the nnU-Net pipeline on CPU (minutes, not days); its model is
    not meant to segment well.
    """

    def __init__(
        self,
        plans: dict[str, Any],
        configuration: str,
        fold: int,
        dataset_json: dict[str, Any],
        device: torch.device = torch.device("cuda"),  # noqa: B008 (nnU-Net's signature)
    ) -> None:
        # the checkpoint's init_args and the results' plans.json both record the shrunk plans
        super().__init__(
            shrink_configuration(plans, configuration), configuration, fold, dataset_json, device
        )
        self.num_epochs = 2
        self.num_iterations_per_epoch = 5
        self.num_val_iterations_per_epoch = 2
        self.save_every = 1000

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Skipped: nnU-Net's sliding-window validation with mirroring takes longer than this
        training on CPU; the pipeline's evaluate stage measures the model on held-out cases."""
        self.print_to_log_file("final validation skipped (nnUNetTrainer_CerebraScanShort)")


PROJECT_TRAINERS: dict[str, type[nnUNetTrainer]] = {
    nnUNetTrainer_CerebraScanShort.__name__: nnUNetTrainer_CerebraScanShort,
}


def find_trainer_class(name: str) -> type[nnUNetTrainer]:
    """The trainer class called ``name``: one of :data:`PROJECT_TRAINERS`, else nnU-Net's.

    Raises:
        ValueError: no trainer has that name.
    """
    if name in PROJECT_TRAINERS:
        return PROJECT_TRAINERS[name]
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        found: type[nnUNetTrainer] = recursive_find_trainer_class_by_name(name)
    except RuntimeError as exc:
        raise ValueError(
            f"no nnU-Net trainer {name!r} (project trainers: {sorted(PROJECT_TRAINERS)})"
        ) from exc
    return found
