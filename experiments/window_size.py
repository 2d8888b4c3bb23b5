"""Could fewer network voxels per case beat nnU-Net by more? Window size and step (issue #21).

On the 2-core CPUs measured, CerebraScan's OpenVINO engine spends ~90 % of a case in the
network, whose convolutions already run near the cores' FMA peak (benchmarks/README.md). The one
lever left is computing fewer voxels: nnU-Net's sliding window (64³ tiles, step 0.5) evaluates a
cropped 1.5 mm brain ~3x over, the overlap. This measures, on held-out phantoms with the trained
default network imported as an nnU-Net model (the benchmark's ``--network default-trained``):

- nnUNetPredictor, step 0.5 (nnU-Net's default: the reference) and step 1.0;
- CerebraScan's served path (``segment_study`` with the OpenVINO fp32 runner) at
  ``runner.tile_step`` 0.5 and 1.0: the same windows as nnU-Net at each step;
- windows larger than the training patch, on the same compiled network reshaped (the graph is
  fully convolutional): 96³ tiles at step 0.5, and the whole cropped volume in one call (padded
  to a multiple of 8, the network's total stride).

Per variant: seconds for the whole segmentation of the case (the served path's include its pre-
and postprocessing; median of ``--repeats``, rounds interleaved, no TTA), label
agreement with the reference, and Dice per BraTS region (WT, TC, ET) against the phantom's true
labels. Labels never leave the process; the JSON holds figures only.

    .venv/bin/python experiments/window_size.py --cases 4 --out /tmp/window_size.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_nnunet import CACHE, _dices, phantom_case, write_nnunet_folder  # noqa: E402

from cerebrascan.inputs.study import Study  # noqa: E402
from cerebrascan.segmentation import finish_case, prepare_case, segment_study  # noqa: E402
from cerebrascan.testing.nnunet_reference import quiet_predictor  # noqa: E402
from cerebrascan.training.nnunet_import import build_nnunet_model_folder  # noqa: E402
from runners.factory import build_runner  # noqa: E402
from runners.prediction import RunnerPrediction  # noqa: E402
from runners.settings import RunnerSettings  # noqa: E402
from runners.sliding_window import sliding_window_logits, softmax  # noqa: E402
from schemas.model_spec import BRATS_REGIONS, ModelSpec  # noqa: E402

logger = logging.getLogger("window_size")

SPACING = (1.5, 1.5, 1.5)
NETWORK_STRIDE = 8
"""Product of the default network's strides (1, 2, 2, 2): a whole-volume input is padded to it."""


class ReshapedNetwork:
    """The imported ONNX under OpenVINO fp32, compiled once per input shape met."""

    def __init__(self, onnx_path: Path, spec: ModelSpec) -> None:
        import openvino as ov

        self.core = ov.Core()
        self.model = self.core.read_model(str(onnx_path))
        self.spec = spec
        self.compiled: dict[tuple[int, ...], Any] = {}

    def __call__(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        shape = tuple(batch.shape)
        if shape not in self.compiled:
            model = self.model.clone()
            model.reshape({self.spec.input_name: list(shape)})
            self.compiled[shape] = self.core.compile_model(
                model,
                "CPU",
                {
                    "INFERENCE_PRECISION_HINT": "f32",
                    "PERFORMANCE_HINT": "LATENCY",
                    "NUM_STREAMS": 1,
                    "INFERENCE_NUM_THREADS": 2,
                },
            )
        result = self.compiled[shape]({0: np.ascontiguousarray(batch)})
        logits: npt.NDArray[np.float32] = np.asarray(result[0], dtype=np.float32)
        return logits


def whole_volume_logits(
    volume: npt.NDArray[np.float32], network: ReshapedNetwork
) -> npt.NDArray[np.float32]:
    """One network call on the whole volume, zero-padded to the network's stride (and at least
    its patch)."""
    spatial = volume.shape[1:]
    target = [
        max(patch, -(-size // NETWORK_STRIDE) * NETWORK_STRIDE)
        for size, patch in zip(spatial, network.spec.patch_size, strict=True)
    ]
    pads = [((t - s) // 2, t - s - (t - s) // 2) for s, t in zip(spatial, target)]
    logits = network(np.pad(volume, [(0, 0), *pads])[None])[0]
    inside: npt.NDArray[np.float32] = logits[
        (slice(None), *(slice(p[0], p[0] + s) for p, s in zip(pads, spatial)))
    ]
    return inside


def case_variants(
    study: Study,
    spec: ModelSpec,
    predictors: dict[float, Any],
    runners: dict[float, Any],
    network: ReshapedNetwork,
) -> dict[str, Callable[[], npt.NDArray[Any]]]:
    """Each contender on ``study``: a call returning its labels on the study's grid."""
    nnunet_input = study.images.transpose(0, 3, 2, 1).copy()
    case = prepare_case(study, spec)

    def labels_from(logits: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        prediction = RunnerPrediction(probabilities=softmax(logits), logits=logits)
        return finish_case(study, spec, case, prediction).labels

    def nnunet(step: float) -> Callable[[], npt.NDArray[Any]]:
        return lambda: np.asarray(
            predictors[step].predict_single_npy_array(
                nnunet_input, {"spacing": list(SPACING[::-1])}, None, None, False
            )
        ).transpose(2, 1, 0)

    def served(step: float) -> Callable[[], npt.NDArray[Any]]:
        return lambda: segment_study(study, runners[step], mirror_tta=False).labels

    return {
        "nnUNetPredictor step 0.5": nnunet(0.5),
        "nnUNetPredictor step 1.0": nnunet(1.0),
        "cerebrascan openvino fp32, 64³ step 0.5": served(0.5),
        "cerebrascan openvino fp32, 64³ step 1.0": served(1.0),
        "openvino fp32, 96³ windows step 0.5": lambda: labels_from(
            sliding_window_logits(
                case.data, network, patch_size=(96, 96, 96), num_classes=len(spec.output_labels)
            )
        ),
        "openvino fp32, whole volume in one call": lambda: labels_from(
            whole_volume_logits(case.data, network)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4, help="held-out phantoms 0..N-1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.cases < 1 or args.repeats < 1:
        parser.error(f"--cases and --repeats must be at least 1, got {args.cases}, {args.repeats}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    torch.set_num_threads(2)
    source = CACHE / "nnunet-default-trained" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    if not (source / "fold_0" / "checkpoint_final.pth").exists():
        write_nnunet_folder(source.parent, "default-trained")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        imported = build_nnunet_model_folder(source, Path(scratch) / "imported")
        spec = ModelSpec.model_validate_json((imported.folder / "model_spec.json").read_text())
        network = ReshapedNetwork(imported.folder / "model.onnx", spec)
        runners = {
            step: build_runner(
                imported.folder,
                spec,
                RunnerSettings(engine="openvino", precision="fp32", tile_step=step),
                Path(scratch) / "engine-cache",
            )
            for step in (0.5, 1.0)
        }
        predictors = {
            step: quiet_predictor(source, (0,), mirroring=False, tile_step=step)
            for step in (0.5, 1.0)
        }

        for index in range(args.cases):
            images, truth = phantom_case(index, SPACING)
            study = Study(
                images=images,
                affine=np.diag([*SPACING, 1.0]),
                modalities=tuple(spec.modalities),
            )
            variants = case_variants(study, spec, predictors, runners, network)
            times: dict[str, list[float]] = {name: [] for name in variants}
            labels: dict[str, npt.NDArray[Any]] = {}
            for round_index in range(args.repeats + 1):  # round 0 compiles and warms up
                for name, run in variants.items():
                    start = time.perf_counter()
                    labels[name] = run()
                    if round_index:
                        times[name].append(time.perf_counter() - start)
            reference = labels["nnUNetPredictor step 0.5"]
            reference_s = statistics.median(times["nnUNetPredictor step 0.5"])
            for name, result in labels.items():
                seconds = statistics.median(times[name])
                row = {
                    "case": index,
                    "image_shape": list(images.shape),
                    "variant": name,
                    "median_s": seconds,
                    "speedup_vs_reference": reference_s / seconds,
                    "agreement_with_reference": float((result == reference).mean()),
                    "dice_vs_truth": {
                        region: round(value, 4)
                        for region, value in (_dices(truth, result) or {}).items()
                    },
                }
                logger.info(json.dumps(row))
                rows.append(row)
    summary: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(row["variant"] for row in rows):
        mine = [row for row in rows if row["variant"] == name]
        summary[name] = {
            "speedup_vs_reference_median": statistics.median(
                row["speedup_vs_reference"] for row in mine
            ),
            "agreement_with_reference_min": min(row["agreement_with_reference"] for row in mine),
            "dice_vs_truth_mean": {
                region: round(statistics.mean(row["dice_vs_truth"][region] for row in mine), 4)
                for region in BRATS_REGIONS
            },
        }
    args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    logger.info(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
