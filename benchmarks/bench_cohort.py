"""Cohort throughput on Ray Data against sequential pipeline calls, in one run.

Writes ``--unique`` 240x240x155 phantom cases (listed round-robin up to ``--studies`` study
keys: every study is analysed from scratch, the content repeats), registers the bundled
models in a temporary data folder, then measures, with default settings and every analyzer:

1. sequential: decode + ``AnalysisPipeline.run`` of each study in this process, one after
   another (what ``POST /analyze`` does per request, without HTTP);
2. ``cohort run`` on a local Ray (``--cpus`` CPUs) with 1 model actor, then with 2;
3. sequential again: on a shared machine the load moves, so the baseline is the mean of the
   runs before and after the cohorts (both are recorded).

Ray's start-up is timed apart; a cohort's wall time includes its actors' start (model
resolution, analyzer host) and the writes of every study's files and ledger row.

    .venv/bin/python benchmarks/bench_cohort.py --studies 16 \
        --out benchmarks/results/cohort_cpu2.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench_cohort")
MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def _manifest(path: Path, cases: list[Path], studies: int) -> Path:
    lines = ["study_key," + ",".join(MODALITIES)]
    for index in range(studies):
        case = cases[index % len(cases)]
        files = [str(case / f"{case.name}-{m}.nii.gz") for m in MODALITIES]
        lines.append(f"STUDY-{index:03d}," + ",".join(files))
    path.write_text("\n".join(lines) + "\n")
    return path


def _sequential(settings: Any, manifest: Path) -> dict[str, Any]:
    from cerebrascan.cohorts.manifest import read_manifest
    from cerebrascan.inputs.nifti import read_uploads
    from cerebrascan.pipeline import AnalysisPipeline
    from cerebrascan.registry import resolve_model
    from schemas.analysis import AnalyzeOptions

    clock = time.perf_counter()
    pipeline = AnalysisPipeline(settings, resolve_model(settings))
    setup_s = time.perf_counter() - clock
    entries = read_manifest(manifest.read_bytes(), manifest.name)
    seconds = []
    clock = time.perf_counter()
    for entry in entries:
        start = time.perf_counter()
        study = read_uploads(
            {m: Path(p) for m, p in entry.contrasts.items()},
            MODALITIES,
            max_voxels=settings.limits.max_voxels,
        )
        pipeline.run(study, AnalyzeOptions())
        seconds.append(time.perf_counter() - start)
    wall = time.perf_counter() - clock
    return {
        "pipeline_setup_s": round(setup_s, 2),
        "wall_s": round(wall, 2),
        "per_study_median_s": round(statistics.median(seconds), 3),
        "studies_per_minute": round(len(entries) / wall * 60, 2),
    }


def _cohort(settings: Any, manifest: Path, out: Path, actors: int) -> dict[str, Any]:
    from cerebrascan.cohorts.run import CohortRequest, run_cohort

    cohorts = settings.cohorts.model_copy(update={"actors": actors})
    analysis_actors = cohorts.analysis_actors
    run_settings = settings.model_copy(update={"cohorts": cohorts})
    clock = time.perf_counter()
    with open(os.devnull, "w") as quiet:
        summary = run_cohort(
            run_settings, CohortRequest(str(manifest), str(out)), progress_stream=quiet
        )
    wall = time.perf_counter() - clock
    return {
        "actors": actors,
        "analysis_actors": analysis_actors,
        "wall_s": round(wall, 2),
        "studies_per_minute": round(summary["processed"] / wall * 60, 2),
        "counts": summary["counts"],
        "stage_p50_s": {k: v["p50_s"] for k, v in summary["stages"].items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--unique", type=int, default=4, help="distinct phantom cases")
    parser.add_argument(
        "--cpus",
        type=int,
        default=None,
        help="logical CPUs of the local Ray; default: this machine's, or what 2 model actors, "
        "the analysis actor and a task reserve if that is more",
    )
    parser.add_argument(
        "--shared", action="store_true", help="other work shares the machine (recorded)"
    )
    parser.add_argument(
        "--analysis-actors",
        type=int,
        default=1,
        help="analysis actors (postprocess, analyzers, store) of every cohort run",
    )
    parser.add_argument("--machine", default="cpu2")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(tempfile.mkdtemp(prefix="bench-cohort-"))
    os.environ["CEREBRASCAN_DATA_DIR"] = str(work / "data")

    from cerebrascan.classifiers.model_registry import ensure_bundled_classifiers
    from cerebrascan.cohorts.run import start_ray
    from cerebrascan.phantoms.writer import write_cohort
    from cerebrascan.registry import ensure_default_model
    from cerebrascan.settings import Settings

    settings = Settings()
    two_actors = settings.cohorts.model_copy(
        update={"actors": 2, "analysis_actors": args.analysis_actors}
    )
    cpus = args.cpus or max(os.cpu_count() or 1, math.ceil(two_actors.reserved_cpus))
    settings = settings.model_copy(
        update={
            "cohorts": settings.cohorts.model_copy(
                update={
                    "local_cpus": cpus,
                    "object_store_mb": 1000,
                    "analysis_actors": args.analysis_actors,
                }
            )
        }
    )
    ensure_default_model(settings)
    ensure_bundled_classifiers(settings)
    logger.info("writing %d phantom cases", args.unique)
    cases = write_cohort(work / "cases", seed=2026, n_cases=args.unique, prefix="BENCH")
    manifest = _manifest(work / "cohort.csv", cases, args.studies)

    logger.info("sequential pipeline calls (before)")
    sequential_before = _sequential(settings, manifest)
    logger.info("sequential: %s", sequential_before)
    clock = time.perf_counter()
    start_ray(settings)
    ray_start_s = time.perf_counter() - clock
    runs = []
    for actors in (1, 2):
        logger.info("cohort with %d actor(s)", actors)
        runs.append(_cohort(settings, manifest, work / f"out-{actors}", actors))
        logger.info("cohort: %s", runs[-1])
    import ray

    ray.shutdown()
    # the machine is shared: the load moves, so the baseline brackets the cohort runs
    logger.info("sequential pipeline calls (after)")
    sequential_after = _sequential(settings, manifest)
    logger.info("sequential: %s", sequential_after)
    sequential = {
        "before": sequential_before,
        "after": sequential_after,
        "studies_per_minute": round(
            (sequential_before["studies_per_minute"] + sequential_after["studies_per_minute"]) / 2,
            2,
        ),
    }
    sequential_wall_s = (sequential_before["wall_s"] + sequential_after["wall_s"]) / 2
    result = {
        "machine": args.machine,
        "shared_machine": args.shared,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "ray_cpus": cpus,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "studies": args.studies,
        "unique_cases": args.unique,
        "grid": "240x240x155, 1 mm",
        "ray_start_s": round(ray_start_s, 2),
        "sequential": sequential,
        "cohort": runs,
        "speedup_2_vs_1_actor": round(
            runs[1]["studies_per_minute"] / runs[0]["studies_per_minute"], 2
        ),
        "speedup_vs_sequential": {
            str(run["actors"]): round(
                run["studies_per_minute"] / sequential["studies_per_minute"], 2
            )
            for run in runs
        },
        "overhead_per_study_s_1_actor": round(
            (runs[0]["wall_s"] - sequential_wall_s) / args.studies, 3
        ),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
