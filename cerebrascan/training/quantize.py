"""int8 post-training quantisation of the registry's network for the OpenVINO engine (NNCF).

``cerebrascan pipeline quantize --model-dir models/default`` reads ``model.onnx``, calibrates
NNCF's post-training quantisation (OpenVINO backend, :func:`nncf.quantize`) on phantom tiles
preprocessed exactly as serving preprocesses a study (:mod:`cerebrascan.training.calibration`)
and writes ``model.int8.xml`` / ``model.int8.bin`` (an OpenVINO IR with FakeQuantize nodes:
serving loads it with openvino alone, no nncf or torch) and ``int8_calibration.json``: the
phantom seeds and cases, every tile's position, the NNCF and OpenVINO versions, the preset, the
ignored scope and the digests of the ONNX it came from and of the IR it made.

The calibration phantoms have their own cohort seed (:data:`CALIBRATION_SEED`), neither the
training (1000) nor the held-out (2000) cohort, so the held-out check of the precision guard
stays on cases the quantiser never saw. Same ONNX, seed and options: the same IR, byte for byte.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cerebrascan.inputs.study import Study
from cerebrascan.training.calibration import CalibrationTile, cut_tile, tile_starts
from cerebrascan.training.dataset import to_training_case
from runners.engine_cache import file_digest
from runners.openvino_runner import INT8_MODEL_FILE
from runners.precision_record import separate_network_digest
from schemas.model_spec import ModelSpec

logger = logging.getLogger(__name__)

CALIBRATION_RECORD = "int8_calibration.json"
CALIBRATION_SEED = 3000
"""Cohort seed of the calibration phantoms (training: 1000, held-out: 2000)."""

Preset = Literal["mixed", "performance"]


@dataclass(frozen=True)
class QuantizeOptions:
    """What the quantisation is calibrated on and how.

    Attributes:
        seed: phantom cohort seed; also seeds the tile positions.
        cases: how many phantoms of that cohort.
        tiles_per_case: tiles cut from each (all hold tumour and brain).
        preset: NNCF preset: ``performance`` (symmetric activations) or ``mixed`` (asymmetric).
        fast_bias_correction: NNCF's fast bias correction (else its slower full one).
        keep_first_conv_fp32: leave the first convolution (raw z-scored input) unquantised.
        keep_last_conv_fp32: leave the segmentation head's last convolution unquantised.
        activation_range: how activation ranges are estimated from the tiles: NNCF's default
            for the preset (means of per-tile minima / maxima) or ``minmax`` (the extremes over
            all tiles: nothing seen in calibration is clipped).
    """

    seed: int = CALIBRATION_SEED
    cases: int = 16
    tiles_per_case: int = 8
    preset: Preset = "performance"
    fast_bias_correction: bool = True
    keep_first_conv_fp32: bool = True
    keep_last_conv_fp32: bool = True
    activation_range: Literal["default", "minmax"] = "default"


def _case_tiles(
    study: Study,
    labels: npt.NDArray[np.uint8],
    case_id: str,
    spec: ModelSpec,
    count: int,
    rng: np.random.Generator,
) -> list[CalibrationTile]:
    """``count`` tiles of one case preprocessed with the serving code for ``spec``."""
    if list(study.modalities) != list(spec.modalities):
        raise ValueError(
            f"calibration case {case_id} has {study.modalities}, the network {spec.modalities}"
        )
    prepared = to_training_case(study, labels, spec.target_spacing_mm, list(spec.output_labels))
    starts = tile_starts(prepared, spec.patch_size, count, rng)
    return [cut_tile(prepared, case_id, start, spec.patch_size) for start in starts]


def phantom_calibration_tiles(spec: ModelSpec, options: QuantizeOptions) -> list[CalibrationTile]:
    """Tiles of ``options.cases`` phantoms of cohort ``options.seed``, as serving sees them.

    Each phantom is generated in memory (seeded: the same cases every time), preprocessed with
    the serving code for the network ``spec`` describes, and cut into ``tiles_per_case`` tiles
    holding tumour and brain (:func:`cerebrascan.training.calibration.tile_starts`).
    """
    from cerebrascan.phantoms.contrasts import MODALITIES
    from cerebrascan.phantoms.generator import case_seed, generate_case

    rng = np.random.default_rng(options.seed)
    tiles: list[CalibrationTile] = []
    for index in range(options.cases):
        case = generate_case(case_seed(options.seed, index), f"CALIBRATION-{index:05d}")
        study = Study(
            images=np.stack([case.images[m].astype(np.float32) for m in MODALITIES]),
            affine=case.affine,
            modalities=tuple(MODALITIES),
        )
        tiles += _case_tiles(
            study, case.segmentation, case.case_id, spec, options.tiles_per_case, rng
        )
        logger.info("calibration phantom %d/%d: %d tiles", index + 1, options.cases, len(tiles))
    return tiles


def folder_calibration_tiles(
    spec: ModelSpec, folders: Sequence[Path], options: QuantizeOptions
) -> list[CalibrationTile]:
    """Tiles of case folders with a reference segmentation (e.g. the training phantoms);
    ``options.seed`` seeds the tile positions, ``options.cases`` is ignored."""
    from cerebrascan.inputs.case_folder import read_case, read_labels

    rng = np.random.default_rng(options.seed)
    tiles: list[CalibrationTile] = []
    for folder in folders:
        tiles += _case_tiles(
            read_case(folder), read_labels(folder), folder.name, spec, options.tiles_per_case, rng
        )
    return tiles


def convolution_names(model: Any) -> list[str]:
    """Friendly names of the model's convolutions, in execution order."""
    kinds = ("Convolution", "ConvolutionBackpropData", "GroupConvolution")
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in kinds]


def ignored_convolutions(model: Any, options: QuantizeOptions) -> list[str]:
    """The convolutions ``options`` keeps in fp32 (first and/or last)."""
    names = convolution_names(model)
    kept = []
    if options.keep_first_conv_fp32 and names:
        kept.append(names[0])
    if options.keep_last_conv_fp32 and names and names[-1] not in kept:
        kept.append(names[-1])
    return kept


def canonical_node_names(model: Any) -> None:
    """Renumber the names OpenVINO made from its process-wide counter (``Constant_13025``,
    also inside derived names such as ``ConvolutionBackpropData_13366/fq_weights_1``) in order
    of first appearance in the graph, so the same network serialises to the same XML whatever
    ran before it in the process."""
    ops = model.get_ordered_ops()
    kinds = "|".join(sorted({re.escape(op.get_type_name()) for op in ops}, key=len, reverse=True))
    token = re.compile(rf"(?<![A-Za-z0-9])({kinds})_(\d+)(?![0-9])")
    renumbered: dict[str, str] = {}

    def canonical(match: re.Match[str]) -> str:
        return renumbered.setdefault(match.group(0), f"{match.group(1)}_n{len(renumbered)}")

    for op in ops:
        name = op.get_friendly_name()
        new_name = token.sub(canonical, name)
        if new_name != name:
            op.set_friendly_name(new_name)


def quantize_network(
    onnx_path: Path, spec: ModelSpec, tiles: Sequence[CalibrationTile], options: QuantizeOptions
) -> tuple[Any, list[str]]:
    """NNCF post-training int8 quantisation of the ONNX network (OpenVINO backend).

    Args:
        onnx_path: the fp32 network (dynamic batch axis).
        spec: its input name.
        tiles: the calibration tiles; all are used (``subset_size`` = their number).
        options: preset, bias correction, fp32 convolutions.

    Returns:
        The quantised ``openvino.Model`` and the names of the convolutions kept in fp32.

    Raises:
        ValueError: no calibration tiles.
    """
    import nncf
    import openvino as ov

    if not tiles:
        raise ValueError(f"no calibration tiles for {onnx_path} (phantoms without tumour?)")
    model = ov.Core().read_model(str(onnx_path))
    ignored = ignored_convolutions(model, options)
    dataset = nncf.Dataset(
        [tile.data[None] for tile in tiles], lambda batch: {spec.input_name: batch}
    )
    advanced = None
    if options.activation_range == "minmax":
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        advanced = AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
        )
    quantized = nncf.quantize(
        model,
        dataset,
        preset=nncf.QuantizationPreset(options.preset),
        target_device=nncf.TargetDevice.CPU,
        subset_size=len(tiles),
        fast_bias_correction=options.fast_bias_correction,
        ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
        advanced_parameters=advanced,
    )
    return quantized, ignored


def quantize_model_folder(
    model_dir: Path,
    options: QuantizeOptions,
    out_dir: Path | None = None,
    case_folders: Sequence[Path] | None = None,
) -> dict[str, Any]:
    """Quantise ``model_dir/model.onnx`` and write the int8 IR and its calibration record.

    Args:
        model_dir: a model folder (``model.onnx``, ``model_spec.json``).
        options: calibration set and NNCF options.
        out_dir: where ``model.int8.xml`` / ``.bin`` and ``int8_calibration.json`` go
            (default: ``model_dir``).
        case_folders: calibrate on these case folders (images and ``seg``) instead of
            ``options.cases`` phantoms generated from ``options.seed``.

    Returns:
        The calibration record (also written as ``int8_calibration.json``).

    Raises:
        FileNotFoundError: the folder has no ``model.onnx`` or ``model_spec.json``.
    """
    import nncf
    import openvino as ov

    onnx_path = model_dir / "model.onnx"
    spec_path = model_dir / "model_spec.json"
    for path in (onnx_path, spec_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: quantize needs an exported model folder")
    spec = ModelSpec.model_validate_json(spec_path.read_text())
    if case_folders:
        tiles = folder_calibration_tiles(spec, case_folders, options)
        source = f"case folders {sorted({str(f.parent) for f in case_folders})}"
    else:
        tiles = phantom_calibration_tiles(spec, options)
        source = f"phantoms of cohort seed {options.seed} generated in memory"
    quantized, ignored = quantize_network(onnx_path, spec, tiles, options)
    target = out_dir or model_dir
    target.mkdir(parents=True, exist_ok=True)
    xml_path = target / INT8_MODEL_FILE
    canonical_node_names(quantized)
    # Weights of unquantised layers stay fp32 (the default would store them as fp16).
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    record: dict[str, Any] = {
        "model": INT8_MODEL_FILE,
        "source_onnx_sha256": file_digest(onnx_path),
        "int8_sha256": separate_network_digest(target, INT8_MODEL_FILE),
        "nncf_version": nncf.__version__,
        "openvino_version": str(ov.__version__),
        "options": asdict(options) | ({"cases": len(case_folders)} if case_folders else {}),
        "preset": options.preset,
        "fast_bias_correction": options.fast_bias_correction,
        "ignored_scope": ignored,
        "target_device": "CPU",
        "calibration": {
            "source": f"{source}, preprocessed by the serving code (preprocess_images: head "
            f"crop, z-score, resampling to {list(spec.target_spacing_mm)} mm)",
            "cohort_seed": None if case_folders else options.seed,
            "position_seed": options.seed,
            "cases": sorted({tile.case_id for tile in tiles}),
            "tiles": len(tiles),
            "tile_shape": [len(spec.modalities), *spec.patch_size],
            "tile_rule": "centred on a random tumour voxel of the case, shifted by up to a "
            "quarter patch per axis, clipped into the volume (negative start: zero padding)",
            "positions": [
                {
                    "case": tile.case_id,
                    "start": list(tile.start),
                    "tumour_fraction": round(tile.tumour_fraction, 4),
                    "brain_fraction": round(tile.brain_fraction, 4),
                }
                for tile in tiles
            ],
        },
    }
    (target / CALIBRATION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    logger.info(
        "int8 IR %s from %d tiles of %d phantoms (preset %s, fp32 convolutions %s)",
        xml_path,
        len(tiles),
        len({tile.case_id for tile in tiles}),
        options.preset,
        ignored or "none",
    )
    return record
