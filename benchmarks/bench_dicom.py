"""Time the DICOM path against the segmentation it feeds, on one 240x240x155 phantom study.

Writes a phantom case as a DICOM study (``cerebrascan.testing.dicom_phantoms``: four contrasts
on four grids, distractors, shuffled files) without cropping, zips it, then times
``read_dicom_study`` (unzip, index, select, build, reference grid; brain extraction left out:
its own benchmark is ``bench_brain_extraction.py``) and the segmentation of the resulting study
with the bundled model, ``runs`` times each. Prints and writes a JSON summary.

    .venv/bin/python benchmarks/bench_dicom.py --runs 3 --out benchmarks/results/dicom_cpu2.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import statistics
import tempfile
import time
from pathlib import Path

from cerebrascan.inputs.dicom.settings import DicomSettings
from cerebrascan.inputs.dicom.upload import read_dicom_study
from cerebrascan.phantoms.writer import write_cohort
from cerebrascan.registry import ensure_default_model, resolve_model
from cerebrascan.segmentation import segment_study
from cerebrascan.settings import Settings
from cerebrascan.testing.dicom_phantoms import write_dicom_study
from runners.factory import build_runner

MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="also run the DICOM path once under cProfile: stats to this file, the top "
        "functions (cumulative time) printed",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        settings = Settings(data_dir=folder / "data")
        ensure_default_model(settings)
        model = resolve_model(settings)
        runner = build_runner(model.folder, model.spec, settings.runner, settings.engine_cache_dir)
        (case,) = write_cohort(folder / "cases", seed=777, n_cases=1, prefix="BENCH")
        phantom = write_dicom_study(case, folder / "study", seed=777, margin=240)
        archive = phantom.zip(folder / "study.zip")
        zip_mb = round(archive.stat().st_size / 1e6, 1)
        if args.profile is not None:
            _profile(archive, settings.limits.max_voxels, args.profile)
        dicom_s, segment_s, stages = [], [], []
        shape = None
        for _ in range(args.runs):
            clock = time.perf_counter()
            built = read_dicom_study(
                archive,
                [],
                MODALITIES,
                DicomSettings(),
                max_voxels=settings.limits.max_voxels,
                skull_stripped=True,
            )
            dicom_s.append(time.perf_counter() - clock)
            stages.append(built.timings_ms)
            shape = built.study.shape
            clock = time.perf_counter()
            segment_study(built.study, runner, mirror_tta=False)
            segment_s.append(time.perf_counter() - clock)
    summary = {
        "machine": platform.node(),
        "note": "measured while other jobs shared the 2 cores: upper bounds",
        "processor": platform.processor() or platform.machine(),
        "study": {
            "reference_grid": shape,
            "files": len(phantom.files),
            "zip_mb": zip_mb,
        },
        "runs": args.runs,
        "dicom_path_s": [round(v, 2) for v in dicom_s],
        "segmentation_s": [round(v, 2) for v in segment_s],
        "dicom_path_median_s": round(statistics.median(dicom_s), 2),
        "segmentation_median_s": round(statistics.median(segment_s), 2),
        "dicom_stage_medians_ms": {
            key: round(statistics.median(s[key] for s in stages), 1) for key in stages[0]
        },
    }
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


def _profile(archive: Path, max_voxels: int, out: Path) -> None:
    """One DICOM path under cProfile (the stages' own functions, sorted by cumulative time)."""
    profiler = cProfile.Profile()
    profiler.enable()
    read_dicom_study(
        archive, [], MODALITIES, DicomSettings(), max_voxels=max_voxels, skull_stripped=True
    )
    profiler.disable()
    profiler.dump_stats(out)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
