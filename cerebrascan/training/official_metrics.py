"""The official BraTS 2023 metrics (``brats-evaluation`` 0.0.10, panoptica), run out of process.

``brats-evaluation`` pins ``pandas<3`` and panoptica ``connected-components-3d<4``, which conflict
with the project's environment (MLflow 3, cc3d 4), so the package lives in its own virtual
environment (``make brats-metrics`` creates ``.venv-brats`` from
``requirements/brats_metrics.txt``). This module writes each prediction/reference pair as NIfTI
to a temporary folder, runs :mod:`cerebrascan.training.official_metrics_worker` with that
environment's interpreter and reads its JSON back.

Per region (WT, TC, ET) it returns the package's global figures and its lesion-wise ones:
connected components of each region matched one-to-one by Dice (any overlap), then

- ``lesion_dice``: panoptic quality, the matched lesions' mean Dice times the F1 of the lesion
  detection (``pq_dsc``): a false-positive or missed lesion lowers it;
- ``lesion_matched_dice`` and ``lesion_hd95_mm``: mean Dice and mean HD95 over matched lesions
  only (``sq_dsc``, ``sq_hd95``; the package's ``lesionwise_*_mean``);
- ``lesion_tp``, ``lesion_fp``, ``lesion_fn``: lesion counts.

An infinite HD95 (no matched lesion, one mask empty) becomes 373 mm as the package's own parser
does; a figure that is undefined (no lesion on either side) is None.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cerebrascan.training.metrics import EMPTY_HD95_MM, REGIONS

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("official_metrics_worker.py")
MAKE_TARGET = "make brats-metrics"

#: our key -> panoptica's key in a region's result
_KEYS = {
    "dice": "global_bin_dsc",
    "hd95_mm": "global_bin_hd95",
    "lesion_dice": "pq_dsc",
    "lesion_matched_dice": "sq_dsc",
    "lesion_hd95_mm": "sq_hd95",
    "lesion_tp": "tp",
    "lesion_fp": "fp",
    "lesion_fn": "fn",
}


class OfficialMetricsError(RuntimeError):
    """The official evaluation could not run or failed on a case."""


@dataclass(frozen=True)
class LabelPair:
    """One case's predicted and reference BraTS label maps on the same grid."""

    case: str
    prediction: npt.NDArray[np.integer]
    reference: npt.NDArray[np.integer]
    affine: npt.NDArray[np.float64]


def resolve_python(python: str | Path) -> Path:
    """The interpreter of the isolated environment; a relative path is under the project root.

    Raises:
        OfficialMetricsError: it does not exist (names the make target that creates it).
    """
    path = Path(python)
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    if not path.exists():
        raise OfficialMetricsError(
            f"the official BraTS metrics environment is missing: {path} does not exist; "
            f"create it with `{MAKE_TARGET}` (brats-evaluation in an isolated venv)"
        )
    return path


def _to_float(value: Any, *, hd95: bool) -> float | None:
    if value is None:
        return None
    number = float(value)  # "inf"/"nan" strings from the worker parse too
    if math.isnan(number):
        return None
    if math.isinf(number):
        return EMPTY_HD95_MM if hd95 else None
    return number


def _region_figures(raw: dict[str, Any]) -> dict[str, float | None]:
    return {
        ours: _to_float(raw.get(theirs), hd95=ours.endswith("hd95_mm"))
        for ours, theirs in _KEYS.items()
    }


def _write_label_map(
    labels: npt.NDArray[np.integer], affine: npt.NDArray[np.float64], path: Path
) -> None:
    image = nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), affine)
    image.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def official_region_metrics(
    pairs: Sequence[LabelPair],
    python: str | Path,
    *,
    config: str = "gli",
    timeout_s: float = 1800.0,
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Official BraTS figures per case and region: ``{case: {"WT": {"dice": ..., ...}}}``.

    Args:
        pairs: the label maps to score (labels 0-3, BraTS 2023).
        python: interpreter of the environment holding ``brats-evaluation``.
        config: the package's bundled panoptica config (``gli``: adult glioma).
        timeout_s: limit for the whole evaluation.

    Raises:
        OfficialMetricsError: the environment is missing, the run failed or timed out, or a
            case could not be evaluated.
    """
    interpreter = resolve_python(python)
    if not pairs:
        return {}
    with tempfile.TemporaryDirectory(prefix="cerebrascan-brats-metrics-") as scratch:
        folder = Path(scratch)
        cases = []
        for index, pair in enumerate(pairs):
            if pair.prediction.shape != pair.reference.shape:
                raise OfficialMetricsError(
                    f"{pair.case}: prediction shape {pair.prediction.shape} != "
                    f"reference {pair.reference.shape}"
                )
            # file names carry no case id: the worker is handed the pairs explicitly
            prediction_path = folder / f"prediction-{index}.nii.gz"
            reference_path = folder / f"reference-{index}.nii.gz"
            _write_label_map(pair.prediction, pair.affine, prediction_path)
            _write_label_map(pair.reference, pair.affine, reference_path)
            cases.append(
                {
                    "case": pair.case,
                    "prediction": str(prediction_path),
                    "reference": str(reference_path),
                }
            )
        manifest, result_path = folder / "manifest.json", folder / "result.json"
        manifest.write_text(json.dumps({"config": config, "cases": cases}))
        try:
            completed = subprocess.run(
                [str(interpreter), str(WORKER), str(manifest), str(result_path)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise OfficialMetricsError(
                f"the official BraTS evaluation of {len(pairs)} case(s) took over {timeout_s} s"
            ) from exc
        if not result_path.exists():
            raise OfficialMetricsError(
                f"the official BraTS evaluation failed (exit {completed.returncode}): "
                f"{completed.stderr.strip()[-2000:]}"
            )
        result = json.loads(result_path.read_text())
    by_case: dict[str, dict[str, dict[str, float | None]]] = {}
    for case in result["cases"]:
        if "error" in case:
            raise OfficialMetricsError(
                f"{case['case']}: the official evaluation failed: {case['error']}"
            )
        by_case[case["case"]] = {
            region: _region_figures(case["regions"][region.lower()]) for region in REGIONS
        }
    logger.info("official BraTS metrics for %d case(s)", len(by_case))
    return by_case
