"""The nnU-Net stages of the model pipeline (``pipelines/nnunet/dvc.yaml``): the I/O.

convert (a BraTS 2023-style folder -> nnU-Net raw format, region labels) -> plan
(``nnUNetv2_plan_and_preprocess``) -> train (``nnUNetv2_train``, or
``python -m cerebrascan.training.nnunet_train_entry`` for the project's trainers; each fold's
per-epoch losses and pseudo Dice go to MLflow) -> import (one ONNX model folder,
:mod:`cerebrascan.training.nnunet_import`) -> evaluate (the default model's evaluation code on
the held-out cases) -> register.

nnU-Net runs as subprocesses with ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results``
pointed under one folder (``data/nnunet`` by default); this process's environment is left alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cerebrascan.inputs.case_folder import list_cases, read_case, read_labels
from cerebrascan.settings import Settings
from cerebrascan.training.nnunet_dataset import (
    FILE_ENDING,
    brats_labels,
    downsample_case,
    image_file_name,
    progress_metrics,
    region_dataset_json,
)
from cerebrascan.training.nnunet_params import NnunetParams, NnunetPipelineParams
from cerebrascan.training.params import PipelineParams
from schemas.model_spec import MODALITIES

logger = logging.getLogger(__name__)

NNUNET_EXPERIMENT = "cerebrascan-nnunet"
_LOG_TAIL_CHARS = 3000


class NnunetPipelineError(RuntimeError):
    """An nnU-Net stage cannot run or failed; the message names the input or the log."""


@dataclass(frozen=True)
class NnunetFolders:
    """nnU-Net's three folders under one root (``data/nnunet``)."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def heldout(self) -> Path:
        """Held-out cases on the training grid (written by convert when it downsamples)."""
        return self.root / "heldout"

    def heldout_cases(self, params: NnunetParams) -> Path:
        """Where the evaluate stage reads its cases: ``params.test_cases`` as they are, or
        their downsampled copies."""
        return params.test_cases if params.downsample == 1 else self.heldout

    def model_folder(self, params: NnunetParams) -> Path:
        """``nnUNet_results/DatasetXXX_Name/Trainer__Plans__Configuration``."""
        return self.results / params.dataset_folder / params.results_subfolder

    def environment(self, params: NnunetParams, *, planning: bool = False) -> dict[str, str]:
        """This process's environment plus nnU-Net's folders and process counts."""
        env = dict(os.environ)
        env.update(
            nnUNet_raw=str(self.raw.resolve()),
            nnUNet_preprocessed=str(self.preprocessed.resolve()),
            nnUNet_results=str(self.results.resolve()),
            nnUNet_def_n_proc=str(params.preprocess_processes),
            # the planner sets torch's thread count from this, so it must be >= 1 there
            nnUNet_n_proc_DA=str(
                max(1, params.augmentation_processes) if planning else params.augmentation_processes
            ),
        )
        return env


def _write_nifti(
    array: npt.NDArray[Any], affine: npt.NDArray[np.float64], dtype: type, path: Path
) -> None:
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    image.set_data_dtype(dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def _read_case(folder: Path, factor: int) -> tuple[Any, Any, Any]:
    """A case folder's images, BraTS labels and affine, averaged over ``factor``^3 blocks."""
    try:
        study = read_case(folder)
        labels = brats_labels(read_labels(folder), folder.name)
        if labels.shape != study.shape:
            raise ValueError(f"segmentation grid {labels.shape} != image grid {study.shape}")
        return downsample_case(study.images, labels, study.affine, factor)
    except (ValueError, FileNotFoundError) as exc:
        raise NnunetPipelineError(f"case {folder.name}: {exc}") from exc


def _fresh_folder(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def convert_dataset(params: NnunetParams, folders: NnunetFolders) -> Path:
    """Write ``params.cases`` in nnU-Net's raw format with region labels (WT/TC/ET).

    Each case is read and checked as the service reads a study (four contrasts on one grid);
    BraTS 2021 segmentations (label 4) are renumbered; ``params.downsample`` > 1 averages
    blocks (for CPU runs on phantoms) and then writes the held-out ``params.test_cases`` on the
    same coarse grid under ``<root>/heldout`` (BraTS layout) for the evaluate stage.

    Returns:
        The ``DatasetXXX_Name`` folder.

    Raises:
        NnunetPipelineError: no case folder, or a case that cannot be converted.
    """
    cases = list_cases(params.cases) if params.cases.is_dir() else []
    if not cases:
        raise NnunetPipelineError(f"no BraTS-style case folders under {params.cases}")
    out = folders.raw / params.dataset_folder
    _fresh_folder(out / "imagesTr")
    _fresh_folder(out / "labelsTr")
    for folder in cases:
        images, labels, affine = _read_case(folder, params.downsample)
        for channel, image in enumerate(images):
            _write_nifti(
                image, affine, np.float32, out / "imagesTr" / image_file_name(folder.name, channel)
            )
        _write_nifti(labels, affine, np.uint8, out / "labelsTr" / f"{folder.name}{FILE_ENDING}")
    description = f"{len(cases)} cases from {params.cases} (downsample {params.downsample})"
    dataset_json = region_dataset_json(len(cases), description)
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    logger.info("converted %d cases to %s", len(cases), out)
    heldout = _fresh_folder(folders.heldout)
    if params.downsample == 1:
        (heldout / "README").write_text(f"evaluated on {params.test_cases} as they are\n")
        return out
    test_cases = list_cases(params.test_cases) if params.test_cases.is_dir() else []
    if not test_cases:
        raise NnunetPipelineError(f"no held-out case folders under {params.test_cases}")
    for folder in test_cases:
        images, labels, affine = _read_case(folder, params.downsample)
        case_dir = heldout / folder.name
        case_dir.mkdir()
        for modality, image in zip(MODALITIES, images, strict=True):
            _write_nifti(image, affine, np.float32, case_dir / f"{folder.name}-{modality}.nii.gz")
        _write_nifti(labels, affine, np.uint8, case_dir / f"{folder.name}-seg.nii.gz")
        if (folder / "truth.json").is_file():  # a phantom's tumour type, for the per-type table
            shutil.copy(folder / "truth.json", case_dir / "truth.json")
    return out


def _run_logged(command: list[str], env: dict[str, str], log_path: Path) -> float:
    """Run ``command`` with its output in ``log_path``; seconds taken.

    Raises:
        NnunetPipelineError: a non-zero exit (with the end of the log).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("running %s (log %s)", " ".join(command), log_path)
    started = time.monotonic()
    with log_path.open("w") as log:
        result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
        raise NnunetPipelineError(
            f"{Path(command[0]).name} {' '.join(command[1:3])} exited with {result.returncode}; "
            f"end of {log_path}:\n{tail}"
        )
    return time.monotonic() - started


def _venv_command(name: str) -> str:
    """An nnU-Net console script of this interpreter's environment."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise NnunetPipelineError(f"{path} is missing: install the `nnunet` extra")
    return str(path)


def plan_and_preprocess(params: NnunetParams, folders: NnunetFolders) -> Path:
    """``nnUNetv2_plan_and_preprocess`` for ``params.configuration`` with ``params.planner``.

    Returns:
        The plans file (``nnUNet_preprocessed/DatasetXXX_Name/<plans>.json``).

    Raises:
        NnunetPipelineError: nnU-Net failed, or its plans are not named ``params.plans``.
    """
    if not (folders.raw / params.dataset_folder / "dataset.json").is_file():
        raise NnunetPipelineError(
            f"{folders.raw / params.dataset_folder} has no dataset.json: run the convert stage"
        )
    target = folders.preprocessed / params.dataset_folder
    if target.exists():
        shutil.rmtree(target)
    command = [
        _venv_command("nnUNetv2_plan_and_preprocess"),
        "-d", str(params.dataset_id),
        "-c", params.configuration,
        "-pl", params.planner,
        "-np", str(params.preprocess_processes),
    ]  # fmt: skip
    if params.verify_dataset_integrity:
        command.append("--verify_dataset_integrity")
    seconds = _run_logged(
        command, folders.environment(params, planning=True), folders.logs / "plan.log"
    )
    plans = target / f"{params.plans}.json"
    if not plans.is_file():
        raise NnunetPipelineError(
            f"planner {params.planner} wrote {sorted(p.name for p in target.glob('*.json'))}, "
            f"not {plans.name}: set nnunet.plans to its plans identifier"
        )
    logger.info("planned and preprocessed in %.0f s", seconds)
    return plans


def train_command(params: NnunetParams, fold: str) -> list[str]:
    """The training command of one fold: nnU-Net's own, or this project's entry for the
    project's trainer classes (see :mod:`cerebrascan.training.nnunet_trainers`)."""
    from cerebrascan.training.nnunet_trainers import PROJECT_TRAINERS

    arguments = [
        str(params.dataset_id), params.configuration, fold,
        "-tr", params.trainer, "-p", params.plans, "-device", params.device,
    ]  # fmt: skip
    if params.trainer in PROJECT_TRAINERS:
        return [sys.executable, "-m", "cerebrascan.training.nnunet_train_entry", *arguments]
    return [_venv_command("nnUNetv2_train"), *arguments]


def _region_names(dataset_json: dict[str, Any]) -> list[str]:
    return [name for name in dataset_json.get("labels", {}) if name != "background"]


def train_folds(params: NnunetParams, folders: NnunetFolders, settings: Settings) -> dict[str, Any]:
    """Train every fold of ``params.folds`` as one MLflow run; its summary (also written to
    ``<root>/train_summary.json``).

    Each fold's per-epoch train/val loss, pseudo Dice (mean, moving average, per region),
    learning rate and epoch time are read from its final checkpoint's ``logging`` dict and
    logged as ``fold_<f>/<metric>`` with ``step=epoch``.

    Raises:
        NnunetPipelineError: planning has not run, or nnU-Net failed (its log's end).
    """
    from mlflow.entities import Metric, Param

    from cerebrascan.registry import client_for, ensure_experiment
    from cerebrascan.training.nnunet_import import load_checkpoint

    plans = folders.preprocessed / params.dataset_folder / f"{params.plans}.json"
    if not plans.is_file():
        raise NnunetPipelineError(f"{plans} is missing: run the plan stage")
    model_folder = folders.model_folder(params)
    if model_folder.exists():
        shutil.rmtree(model_folder)
    client = client_for(settings)
    experiment_id = ensure_experiment(client, NNUNET_EXPERIMENT, settings)
    run_id = client.create_run(
        experiment_id, run_name=f"nnunet-{params.trainer}-{params.configuration}"
    ).info.run_id
    client.log_batch(
        run_id,
        params=[Param(f"nnunet.{k}", str(v)) for k, v in params.model_dump(mode="json").items()],
    )
    status = "FAILED"
    folds: dict[str, Any] = {}
    started = time.monotonic()
    try:
        for fold in params.folds:
            seconds = _run_logged(
                train_command(params, fold),
                folders.environment(params),
                folders.logs / f"train_fold_{fold}.log",
            )
            checkpoint = load_checkpoint(model_folder / f"fold_{fold}" / "checkpoint_final.pth")
            dataset_json = checkpoint["init_args"].get("dataset_json") or {}
            rows = progress_metrics(checkpoint["logging"], _region_names(dataset_json))
            stamp = int(time.time() * 1000)
            metrics = [Metric(f"fold_{fold}/{name}", v, stamp, step) for name, v, step in rows]
            for start in range(0, len(metrics), 1000):
                client.log_batch(run_id, metrics=metrics[start : start + 1000])
            last = {name: value for name, value, _ in rows}
            folds[fold] = {
                "seconds": round(seconds, 1),
                "epochs": int(checkpoint.get("current_epoch", 0)),
                "final_train_loss": last.get("train_loss"),
                "final_val_loss": last.get("val_loss"),
                "final_pseudo_dice": last.get("pseudo_dice"),
            }
            client.log_metric(run_id, f"fold_{fold}/train_seconds", seconds)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
    summary = {
        "trainer": params.trainer,
        "configuration": params.configuration,
        "plans": params.plans,
        "dataset": params.dataset_folder,
        "device": params.device,
        "folds": folds,
        "train_seconds": round(time.monotonic() - started, 1),
        "mlflow_run_id": run_id,
    }
    (folders.root / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def import_model(params: NnunetParams, folders: NnunetFolders, out_dir: Path) -> Path:
    """The trained folds as one CerebraScan model folder (ONNX, spec, card); not registered.

    Raises:
        NnunetImportError: see :func:`cerebrascan.training.nnunet_import.build_nnunet_model_folder`.
    """
    from cerebrascan.training.nnunet_import import build_nnunet_model_folder

    if out_dir.exists():
        shutil.rmtree(out_dir)
    imported = build_nnunet_model_folder(
        folders.model_folder(params), out_dir, folds=list(params.folds)
    )
    logger.info("imported %s (max |torch - ORT| %.2g)", out_dir, imported.max_onnx_difference)
    return out_dir


def evaluate_imported(
    pipeline_params: PipelineParams, params: NnunetParams, model_dir: Path, folders: NnunetFolders
) -> dict[str, Any]:
    """The default model's evaluation (serving code path, same metrics) on the imported model;
    writes ``metrics.json`` and appends the results to the import's ``model_card.md``."""
    from cerebrascan.training.evaluate import evaluate_model

    import_card = (model_dir / "model_card.md").read_text().split("\n## Held-out", 1)[0]
    imported = json.loads((model_dir / "metrics.json").read_text())
    test_cases = folders.heldout_cases(params)
    metrics = evaluate_model(pipeline_params, model_dir, test_cases)
    metrics["training_data"] = f"nnU-Net {params.dataset_folder}"
    metrics["nnunet"] = imported.get("nnunet")
    metrics["max_abs_torch_vs_onnxruntime"] = imported.get("max_abs_torch_vs_onnxruntime")
    summary_path = folders.root / "train_summary.json"
    if summary_path.is_file():
        metrics["train_summary"] = json.loads(summary_path.read_text())
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (model_dir / "model_card.md").write_text(import_card + evaluation_section(metrics, params))
    return metrics


def evaluation_section(metrics: dict[str, Any], params: NnunetParams) -> str:
    """The model card's held-out section (markdown)."""
    from cerebrascan.training.evaluate import official_card_section
    from cerebrascan.training.metrics import REGIONS

    mean = metrics["mean"]

    def figure(key: str, digits: int) -> str:
        value = mean.get(key)
        return "n/a" if value is None else f"{value:.{digits}f}"

    rows = "\n".join(
        f"| {r} | {figure(f'{r}_dice', 3)} | {figure(f'{r}_hd95_mm', 2)} |" for r in REGIONS
    )
    summary = metrics.get("train_summary") or {}
    return (
        f"\n## Held-out evaluation\n\n{metrics['held_out_cases']} cases from "
        f"`{params.test_cases}` (downsample {params.downsample}), through the serving code "
        "path (ONNX Runtime, CPU). Trained by "
        f"{params.trainer} ({params.configuration}, folds {', '.join(params.folds)}, "
        f"{params.device}) in {summary.get('train_seconds', 'n/a')} s.\n\n"
        "| region | mean Dice | mean HD95 (mm) |\n|---|---|---|\n"
        f"{rows}\n\n"
        f"Mean relative WT volume error: {figure('WT_volume_relative_error', 3)}.\n"
        + official_card_section(mean)
    )


def register(
    pipeline: NnunetPipelineParams, model_dir: Path, folders: NnunetFolders, settings: Settings
) -> dict[str, str]:
    """Register the evaluated model: as the served model (``settings.model_name`` and alias)
    when ``segmentation.trainer`` is ``nnunet``, else as ``nnunet.model_name@champion``.

    Returns:
        ``{"name": ..., "version": ..., "alias": ...}`` (also the caller's record).
    """
    from cerebrascan.registry import register_model_folder

    if pipeline.segmentation.trainer == "nnunet":
        name, alias = settings.model_name, settings.model_alias
    else:
        name, alias = pipeline.nnunet.model_name, "champion"
    summary_path = folders.root / "train_summary.json"
    run_id = None
    if summary_path.is_file():
        run_id = json.loads(summary_path.read_text()).get("mlflow_run_id")
    version = register_model_folder(settings, model_dir, name=name, alias=alias, run_id=run_id)
    return {"name": name, "version": version, "alias": alias}
