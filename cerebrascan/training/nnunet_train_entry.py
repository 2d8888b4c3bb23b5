"""``nnUNetv2_train`` for the project's trainer classes (``python -m`` this module).

The same arguments and steps as nnU-Net's single-device ``run_training``: the plans and
dataset.json from ``nnUNet_preprocessed``, the trainer built from them, ``--c`` to continue from
the latest checkpoint, training, then nnU-Net's own final validation. Only the trainer lookup
differs (:func:`cerebrascan.training.nnunet_trainers.find_trainer_class`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os


def main(argv: list[str] | None = None) -> None:
    """Train one fold; arguments as ``nnUNetv2_train DATASET CONFIGURATION FOLD``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset_name_or_id")
    parser.add_argument("configuration")
    parser.add_argument("fold")
    parser.add_argument("-tr", dest="trainer", default="nnUNetTrainer_CerebraScanShort")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans")
    parser.add_argument("-device", dest="device", choices=["cpu", "cuda", "mps"], default="cpu")
    parser.add_argument("--c", dest="continue_training", action="store_true")
    args = parser.parse_args(argv)

    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import maybe_load_checkpoint
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from cerebrascan.training.nnunet_trainers import find_trainer_class

    if args.device == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    elif args.device == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    trainer_class = find_trainer_class(args.trainer)
    dataset = args.dataset_name_or_id
    dataset_name = maybe_convert_to_dataset_name(
        dataset if dataset.startswith("Dataset") else int(dataset)
    )
    base = join(os.fspath(nnUNet_preprocessed), dataset_name)
    plans = load_json(join(base, args.plans + ".json"))
    plans["continue_training"] = args.continue_training
    fold: int | str = args.fold if args.fold == "all" else int(args.fold)
    trainer = trainer_class(
        plans=plans,
        configuration=args.configuration,
        fold=fold,
        dataset_json=load_json(join(base, "dataset.json")),
        device=torch.device(args.device),
    )
    maybe_load_checkpoint(trainer, args.continue_training, False)
    trainer.run_training()
    trainer.perform_actual_validation(False)


if __name__ == "__main__":
    main()
