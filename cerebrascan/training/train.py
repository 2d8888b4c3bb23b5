"""Train the default segmentation network on phantom cases (CPU friendly), tracked by MLflow."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from mlflow.entities import Param
from torch import nn

from cerebrascan.inputs.case_folder import list_cases, read_case, read_labels
from cerebrascan.registry import client_for, ensure_experiment
from cerebrascan.settings import Settings
from cerebrascan.training.dataset import TrainingCase, augment, sample_patch, to_training_case
from cerebrascan.training.network import build_network
from cerebrascan.training.params import PipelineParams
from schemas.model_spec import MODALITIES, ModelSpec

logger = logging.getLogger(__name__)

TRAINING_EXPERIMENT = "cerebrascan-segmentation"
OUTPUT_LABELS = [0, 1, 2, 3]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over foreground classes, computed over the whole batch (nnU-Net style)."""
    probabilities = torch.softmax(logits, dim=1)[:, 1:]
    one_hot = nn.functional.one_hot(target.long(), logits.shape[1]).permute(0, 4, 1, 2, 3)[:, 1:]
    axes = (0, 2, 3, 4)
    intersection = (probabilities * one_hot).sum(axes)
    denominator = probabilities.sum(axes) + one_hot.sum(axes)
    return 1.0 - ((2 * intersection + 1e-5) / (denominator + 1e-5)).mean()


def load_training_cases(root: Path, params: PipelineParams) -> list[TrainingCase]:
    """Read and preprocess every case folder under ``root``."""
    cases = []
    for folder in list_cases(root):
        cases.append(
            to_training_case(
                read_case(folder),
                read_labels(folder),
                params.model.target_spacing_mm,
                OUTPUT_LABELS,
            )
        )
    if not cases:
        raise FileNotFoundError(f"no case folders under {root}")
    return cases


def model_spec_for(params: PipelineParams) -> ModelSpec:
    """The contract of the network these params train."""
    return ModelSpec(
        architecture=f"PlainConvUNet(features={params.model.features})",
        modalities=list(MODALITIES),
        target_spacing_mm=params.model.target_spacing_mm,
        patch_size=params.model.patch_size,
        output_labels=OUTPUT_LABELS,
    )


def train(
    params: PipelineParams, train_dir: Path, out_dir: Path, settings: Settings
) -> dict[str, float]:
    """Train, save ``checkpoint.pt``, ``model_spec.json`` and ``train_summary.json`` in ``out_dir``.

    Stops at ``iterations`` or at ``time_limit_minutes``, whichever comes first, and records which.
    """
    torch.manual_seed(params.train.seed)
    torch.set_num_threads(params.train.threads)
    rng = np.random.default_rng(params.train.seed)
    started = time.monotonic()
    cases = load_training_cases(train_dir, params)
    load_seconds = time.monotonic() - started
    logger.info("loaded %d training cases in %.1f s", len(cases), load_seconds)

    spec = model_spec_for(params)
    network = build_network(len(MODALITIES), len(OUTPUT_LABELS), params.model.features)
    optimiser = torch.optim.AdamW(
        network.parameters(), lr=params.train.learning_rate, weight_decay=params.train.weight_decay
    )
    total = params.train.iterations
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda it: max(0.0, 1 - it / total) ** 0.9
    )
    cross_entropy = nn.CrossEntropyLoss()
    client = client_for(settings)
    experiment_id = ensure_experiment(client, TRAINING_EXPERIMENT, settings)
    run_id = client.create_run(experiment_id, run_name="train-default-unet").info.run_id
    deadline = started + params.train.time_limit_minutes * 60
    iteration = 0
    recent: list[float] = []
    logged_params = {
        **{f"model.{k}": v for k, v in params.model.model_dump().items()},
        **{f"train.{k}": v for k, v in params.train.model_dump().items()},
        "train.cases": len(cases),
        "training_data": "phantoms",
    }
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in logged_params.items()])
    status = "FAILED"
    try:
        network.train()
        while iteration < total and time.monotonic() < deadline:
            batch_images, batch_labels = [], []
            for _ in range(params.train.batch_size):
                case = cases[rng.integers(len(cases))]
                images, labels = sample_patch(
                    case,
                    params.model.patch_size,
                    rng,
                    foreground=rng.random() < params.train.foreground_fraction,
                )
                images, labels = augment(images, labels, rng)
                batch_images.append(images)
                batch_labels.append(labels)
            x = torch.from_numpy(np.stack(batch_images))
            y = torch.from_numpy(np.stack(batch_labels).astype(np.int64))
            logits = network(x)
            loss = cross_entropy(logits, y) + soft_dice_loss(logits, y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
            optimiser.step()
            schedule.step()
            iteration += 1
            recent.append(float(loss.item()))
            if iteration % params.train.log_every == 0 or iteration == total:
                mean_loss = float(np.mean(recent))
                recent.clear()
                client.log_metric(run_id, "train_loss", mean_loss, step=iteration)
                logger.info(
                    "iteration %d/%d loss %.4f (%.0f s)",
                    iteration,
                    total,
                    mean_loss,
                    time.monotonic() - started,
                )
        seconds = time.monotonic() - started
        summary = {
            "iterations": iteration,
            "iterations_planned": total,
            "stopped_by_time_limit": iteration < total,
            "train_seconds": round(seconds, 1),
            "load_seconds": round(load_seconds, 1),
            "train_cases": len(cases),
            "final_loss": float(np.mean(recent)) if recent else None,
            "mlflow_run_id": run_id,
        }
        client.log_metric(run_id, "train_seconds", seconds)
        client.log_metric(run_id, "iterations", iteration)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out_dir / "checkpoint.pt")
    (out_dir / "model_spec.json").write_text(spec.model_dump_json(indent=2))
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
