"""Import a trained nnU-Net v2 model folder into the registry as one ONNX model.

The folder is nnU-Net's training output for one configuration
(``nnUNet_results/DatasetXXX/Trainer__Plans__Config``): ``plans.json``, ``dataset.json`` and
``fold_*/checkpoint_final.pth``. Plans and dataset are read with nnunetv2's own
``PlansManager`` / ``ConfigurationManager`` / ``LabelManager``; each fold's network is built by
its trainer's ``build_network_architecture`` with deep supervision off, exactly as
``nnUNetPredictor.initialize_from_trained_model_folder`` does.

Fold ensembling: nnU-Net v2's predictor averages the folds' sliding-window *logits* (not
probabilities: ``predict_logits_from_preprocessed_data``). Tiles, Gaussian weights and mirror
flips are linear in the logits, so one ONNX graph that returns the mean of every fold's logits
per tile gives the same result; that is what is exported (``fold_ensemble =
"mean_logits_in_graph"``).

Needs the ``nnunet`` extra (torch, nnunetv2, onnx); serving the result does not.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.model_spec import (
    MODALITIES,
    ChannelNormalisation,
    ModelSpec,
    NnunetSource,
    Resampling,
    TorchNetwork,
)

logger = logging.getLogger(__name__)

SUPPORTED_READERS = ("SimpleITKIO", "NibabelIO", "Tiff3DIO")
SUPPORTED_RESAMPLING = "resample_data_or_seg_to_shape"

# nnU-Net channel names (dataset.json ``channel_names``) that mean our modalities.
_MODALITY_ALIASES: dict[str, str] = {
    "t1n": "t1n", "t1": "t1n", "t1w": "t1n", "t1native": "t1n", "native": "t1n",
    "t1c": "t1c", "t1ce": "t1c", "t1gd": "t1c", "t1post": "t1c", "t1contrast": "t1c",
    "t2w": "t2w", "t2": "t2w",
    "t2f": "t2f", "flair": "t2f", "t2flair": "t2f",
}  # fmt: skip


class NnunetImportError(ValueError):
    """The nnU-Net model folder cannot be imported; nothing was registered."""


def _set_nnunet_paths(scratch: Path) -> None:
    """nnunetv2 reads ``nnUNet_raw``/``_preprocessed``/``_results`` when imported; import needs
    none of them, so point them at an empty scratch folder instead of the user's shell."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        path = scratch / var
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)


def map_modalities(channel_names: dict[str, str], override: list[str] | None) -> list[str]:
    """Our modality name for each nnU-Net input channel, in channel order."""
    count = len(channel_names)
    if override:
        if len(override) != count:
            raise NnunetImportError(
                f"--modalities gives {len(override)} names but dataset.json has {count} "
                f"input channels {channel_names}"
            )
        names = list(override)
    else:
        names = []
        for index in range(count):
            raw = str(channel_names.get(str(index), ""))
            key = "".join(ch for ch in raw.lower() if ch.isalnum())
            if key not in _MODALITY_ALIASES:
                raise NnunetImportError(
                    f"cannot tell which modality channel {index} ({raw!r}) is; pass "
                    f"--modalities with one of {list(MODALITIES)} per channel"
                )
            names.append(_MODALITY_ALIASES[key])
    unknown = [n for n in names if n not in MODALITIES]
    if unknown or len(set(names)) != len(names):
        raise NnunetImportError(
            f"modalities {names} must be distinct names from {list(MODALITIES)}"
        )
    return names


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``; numpy scalars in nnU-Net's logging allowed."""
    import torch

    safe: list[Any] = [np.dtype, np.core.multiarray.scalar]  # type: ignore[attr-defined]
    safe += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    try:
        with torch.serialization.safe_globals(safe):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise NnunetImportError(
            f"{path} cannot be loaded with torch.load(weights_only=True): {exc}"
        ) from exc
    for key in ("network_weights", "trainer_name", "init_args"):
        if key not in checkpoint:
            raise NnunetImportError(f"{path} is not an nnU-Net v2 checkpoint (no {key!r})")
    return dict(checkpoint)


def _clean_state_dict(weights: dict[str, Any]) -> dict[str, Any]:
    """Strip ``torch.compile``/DDP prefixes (``_orig_mod.``, ``module.``)."""
    cleaned = {}
    for key, value in weights.items():
        for prefix in ("_orig_mod.", "module."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


@dataclass
class ImportedModel:
    """What :func:`import_nnunet_folder` wrote."""

    folder: Path
    spec: ModelSpec
    max_onnx_difference: float
    version: str | None = None


def build_nnunet_model_folder(
    source: Path,
    out_dir: Path,
    *,
    folds: list[str] | None = None,
    checkpoint_name: str = "checkpoint_final.pth",
    modalities: list[str] | None = None,
) -> ImportedModel:
    """Check an nnU-Net v2 training folder and write a CerebraScan model folder from it.

    Raises:
        NnunetImportError: a missing fold or file, plans/dataset that disagree with the
            checkpoints, a channel count that does not match, or an unsupported setting.
    """
    source = Path(source)
    for name in ("plans.json", "dataset.json"):
        if not (source / name).is_file():
            raise NnunetImportError(f"{source} has no {name}; not an nnU-Net v2 model folder")
    if folds is None or not folds:
        folds = sorted(p.name.removeprefix("fold_") for p in source.glob("fold_*") if p.is_dir())
        if not folds:
            raise NnunetImportError(f"{source} has no fold_* folders")
    missing = [f for f in folds if not (source / f"fold_{f}" / checkpoint_name).is_file()]
    if missing:
        raise NnunetImportError(
            f"{source}: fold(s) {missing} have no {checkpoint_name} "
            f"(present: {sorted(p.parent.name for p in source.glob('fold_*/' + checkpoint_name))})"
        )
    with tempfile.TemporaryDirectory(prefix="cerebrascan-nnunet-") as scratch:
        _set_nnunet_paths(Path(scratch))
        return _build(source, out_dir, folds, checkpoint_name, modalities)


def _build(
    source: Path,
    out_dir: Path,
    folds: list[str],
    checkpoint_name: str,
    modalities: list[str] | None,
) -> ImportedModel:
    import inspect
    from importlib.metadata import version as package_version

    import torch
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from cerebrascan.training.export import (
        PARITY_TOLERANCE,
        export_verified_onnx,
        save_torch_weights,
    )
    from runners.torch_network import FoldMean

    plans = json.loads((source / "plans.json").read_text())
    dataset = json.loads((source / "dataset.json").read_text())
    checkpoints = [load_checkpoint(source / f"fold_{f}" / checkpoint_name) for f in folds]
    first = checkpoints[0]
    configuration = first["init_args"].get("configuration")
    trainer_name = first["trainer_name"]
    for fold, checkpoint in zip(folds, checkpoints):
        if checkpoint["trainer_name"] != trainer_name:
            raise NnunetImportError(f"fold {fold} was trained by {checkpoint['trainer_name']}")
        if checkpoint["init_args"].get("configuration") != configuration:
            raise NnunetImportError(f"fold {fold} has configuration mismatch")
        trained_plans = checkpoint["init_args"].get("plans")
        if isinstance(trained_plans, dict) and (
            trained_plans.get("plans_name") != plans.get("plans_name")
            or trained_plans.get("dataset_name") != plans.get("dataset_name")
            or trained_plans.get("configurations", {}).get(configuration)
            != plans.get("configurations", {}).get(configuration)
        ):
            raise NnunetImportError(
                f"plans.json does not match the plans fold {fold} was trained with "
                f"({trained_plans.get('plans_name')}/{trained_plans.get('dataset_name')}, "
                f"configuration {configuration!r})"
            )
        trained_dataset = checkpoint["init_args"].get("dataset_json")
        if isinstance(trained_dataset, dict) and (
            trained_dataset.get("labels") != dataset.get("labels")
            or trained_dataset.get("channel_names", trained_dataset.get("modality"))
            != dataset.get("channel_names", dataset.get("modality"))
        ):
            raise NnunetImportError(
                f"dataset.json labels/channels differ from those fold {fold} was trained with"
            )
    plans_manager = PlansManager(plans)
    if configuration not in plans.get("configurations", {}):
        raise NnunetImportError(f"plans.json has no configuration {configuration!r}")
    config = plans_manager.get_configuration(configuration)
    if len(config.patch_size) != 3:
        raise NnunetImportError(f"configuration {configuration!r} is not 3D")
    if config.previous_stage_name is not None:
        raise NnunetImportError(f"cascade stage {configuration!r} is not supported")
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if dataset.get("overwrite_image_reader_writer"):
        reader = dataset["overwrite_image_reader_writer"]
    if reader not in SUPPORTED_READERS:
        raise NnunetImportError(f"image reader {reader!r} is not supported ({SUPPORTED_READERS})")
    raw_config = config.configuration
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if raw_config.get(key) != SUPPORTED_RESAMPLING:
            raise NnunetImportError(f"{key} {raw_config.get(key)!r} is not supported")
    label_manager = plans_manager.get_label_manager(dataset)
    if label_manager.has_ignore_label:
        raise NnunetImportError("models trained with an ignore label are not supported yet")
    channel_names = dataset.get("channel_names", dataset.get("modality", {}))
    num_inputs = determine_num_input_channels(plans_manager, config, dataset)
    if num_inputs != len(channel_names):
        raise NnunetImportError(
            f"network takes {num_inputs} channels, dataset.json names {len(channel_names)}"
        )
    names = map_modalities(channel_names, modalities)
    schemes = list(config.normalization_schemes)
    if len(schemes) != num_inputs or len(config.use_mask_for_norm) != num_inputs:
        raise NnunetImportError(
            f"plans normalise {len(schemes)} channels but dataset.json has {num_inputs}"
        )
    intensity = plans_manager.foreground_intensity_properties_per_channel
    normalisation = []
    for c, scheme in enumerate(schemes):
        try:
            normalisation.append(
                ChannelNormalisation(
                    scheme=scheme,
                    use_mask=bool(config.use_mask_for_norm[c]),
                    intensity_properties={
                        k: float(v) for k, v in (intensity.get(str(c)) or {}).items()
                    }
                    or None,
                )
            )
        except ValueError as exc:
            raise NnunetImportError(f"channel {c} normalisation {scheme!r}: {exc}") from exc
    num_outputs = label_manager.num_segmentation_heads
    from cerebrascan.training.nnunet_trainers import find_trainer_class

    try:  # nnU-Net's own trainers, and this project's (nnunet_trainers.py)
        trainer_class = find_trainer_class(trainer_name)
    except ValueError as exc:
        raise NnunetImportError(f"trainer class {trainer_name!r} not found: {exc}") from exc
    networks = []
    for fold, checkpoint in zip(folds, checkpoints):
        if (
            "plans_manager"
            in inspect.signature(trainer_class.build_network_architecture).parameters
        ):
            network = trainer_class.build_network_architecture(
                plans_manager, config, num_inputs, num_outputs, enable_deep_supervision=False
            )
        else:
            network = trainer_class.build_network_architecture(
                config.network_arch_class_name,
                config.network_arch_init_kwargs,
                config.network_arch_init_kwargs_req_import,
                num_inputs,
                num_outputs,
                enable_deep_supervision=False,
            )
        try:
            network.load_state_dict(_clean_state_dict(checkpoint["network_weights"]))
        except RuntimeError as exc:
            raise NnunetImportError(
                f"fold {fold} weights do not fit the network from plans.json/dataset.json "
                f"({num_inputs} input, {num_outputs} output channels): {str(exc)[:500]}"
            ) from exc
        network.eval()
        networks.append(network)

    if label_manager.has_regions:
        regions = [
            [int(v) for v in (r if isinstance(r, list | tuple) else [r])]
            for r in label_manager.foreground_regions
        ]
        output_kind = "sigmoid_regions"
        class_order = [int(v) for v in label_manager.regions_class_order]
    else:
        regions, output_kind, class_order = None, "softmax_labels", None
    all_labels = sorted(int(v) for v in label_manager.all_labels)
    if all_labels != list(range(len(all_labels))):
        raise NnunetImportError(f"labels {all_labels} are not consecutive from 0")
    mirror = first.get("inference_allowed_mirroring_axes")
    data_kwargs = raw_config.get("resampling_fn_data_kwargs", {})
    prob_kwargs = raw_config.get("resampling_fn_probabilities_kwargs", {})

    def resampling(kwargs: dict[str, Any]) -> Resampling:
        return Resampling(
            order=int(kwargs.get("order", 3)),
            order_z=int(kwargs.get("order_z", 0)),
            force_separate_z=kwargs.get("force_separate_z"),
        )

    spec = ModelSpec(
        format_version=2,
        architecture=f"nnU-Net {config.network_arch_class_name.rsplit('.', 1)[-1]}",
        modalities=names,
        target_spacing_mm=tuple(float(s) for s in config.spacing),  # type: ignore[arg-type]
        patch_size=tuple(int(p) for p in config.patch_size),  # type: ignore[arg-type]
        normalisation="per_channel",
        output_kind=output_kind,  # type: ignore[arg-type]
        output_labels=all_labels,
        mirror_axes=tuple(int(a) for a in mirror) if mirror is not None else (),
        preprocessing="nnunet",
        transpose_forward=tuple(plans_manager.transpose_forward),  # type: ignore[arg-type]
        transpose_backward=tuple(plans_manager.transpose_backward),  # type: ignore[arg-type]
        channel_normalisation=normalisation,
        resampling_data=resampling(data_kwargs),
        resampling_probabilities=resampling(prob_kwargs),
        regions=regions,
        regions_class_order=class_order,
        label_names=dataset.get("labels"),
        nnunet=NnunetSource(
            nnunetv2_version=package_version("nnunetv2"),
            dataset_name=str(plans.get("dataset_name")),
            plans_name=str(plans.get("plans_name")),
            configuration=str(configuration),
            trainer=trainer_name,
            folds=[str(f) for f in folds],
            checkpoint=checkpoint_name,
        ),
    )

    ensemble = FoldMean(networks).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    difference, exported_shape = export_verified_onnx(ensemble, spec, num_inputs, onnx_path)
    if exported_shape != (2, num_outputs, *spec.patch_size) or difference > PARITY_TOLERANCE:
        raise NnunetImportError(
            f"exported ONNX differs from torch: shape {exported_shape}, max |Δ| {difference:.3g}"
        )
    description = _torch_description(trainer_class, config, num_inputs, num_outputs, folds)
    if description is not None:
        example = torch.randn(1, num_inputs, *spec.patch_size)
        save_torch_weights(networks, description, out_dir, example)
        spec = spec.model_copy(update={"torch_network": description})
    else:
        logger.warning("trainer %s builds its own network: no torch engine for it", trainer_name)
    (out_dir / "model_spec.json").write_text(spec.model_dump_json(indent=2))
    metrics = {
        "training_data": f"nnU-Net {plans.get('dataset_name')}",
        "source": "nnunetv2 import",
        "nnunet": spec.nnunet.model_dump() if spec.nnunet else None,
        "max_abs_torch_vs_onnxruntime": difference,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "model_card.md").write_text(_model_card(spec, dataset))
    return ImportedModel(folder=out_dir, spec=spec, max_onnx_difference=difference)


def _torch_description(
    trainer_class: Any, config: Any, num_inputs: int, num_outputs: int, folds: list[str]
) -> TorchNetwork | None:
    """The torch-engine description of the folds' network, or None when it cannot be made.

    Only for trainers that build the network from the plans as nnU-Net's own trainer does
    (``get_network_from_plans``) and for nnU-Net's U-Net classes; a custom trainer's network is
    served by ONNX Runtime, OpenVINO or TensorRT only.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if trainer_class.build_network_architecture is not nnUNetTrainer.build_network_architecture:
        return None
    try:
        return TorchNetwork(
            class_path=config.network_arch_class_name,
            kwargs=dict(config.network_arch_init_kwargs),
            requires_import=list(config.network_arch_init_kwargs_req_import),
            input_channels=num_inputs,
            num_outputs=num_outputs,
            weights=[f"fold_{fold}.safetensors" for fold in folds],
        )
    except ValueError as exc:
        logger.warning("no torch engine for this network: %s", exc)
        return None


def _model_card(spec: ModelSpec, dataset: dict[str, Any]) -> str:
    source = spec.nnunet
    assert source is not None
    return (
        f"# Imported nnU-Net v2 model ({source.dataset_name})\n\n"
        "**Research use only.** Imported from an nnU-Net v2 training folder; CerebraScan has "
        "not evaluated it. Its quality is whatever its training gave it.\n\n"
        f"- trainer / plans / configuration: {source.trainer} / {source.plans_name} / "
        f"{source.configuration}\n"
        f"- folds: {', '.join(source.folds)} ({source.checkpoint}); logits averaged in one "
        "ONNX graph, as nnU-Net's predictor does\n"
        f"- inputs: {', '.join(spec.modalities)}; output: {spec.output_kind}\n"
        f"- labels: {json.dumps(dataset.get('labels'))}\n"
        f"- patch {list(spec.patch_size)}, spacing {list(spec.target_spacing_mm)} "
        f"(transpose_forward {list(spec.transpose_forward)}), mirror axes "
        f"{list(spec.mirror_axes)}\n"
        f"- nnunetv2 {source.nnunetv2_version}\n"
    )


def import_nnunet_folder(
    settings: Any,
    source: Path,
    *,
    name: str,
    alias: str = "champion",
    out_dir: Path | None = None,
    folds: list[str] | None = None,
    checkpoint_name: str = "checkpoint_final.pth",
    modalities: list[str] | None = None,
) -> ImportedModel:
    """Build the model folder and register it as one new version of ``name``.

    Everything is checked and exported before the registry is touched, so a refused folder
    registers nothing.

    Raises:
        NnunetImportError: see :func:`build_nnunet_model_folder`.
    """
    from cerebrascan.registry import register_model_folder

    target = out_dir or settings.data_dir / "imported" / name
    staging = target.with_name(target.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        imported = build_nnunet_model_folder(
            source, staging, folds=folds, checkpoint_name=checkpoint_name, modalities=modalities
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    imported.folder = target
    imported.version = register_model_folder(settings, target, name=name, alias=alias)
    return imported
