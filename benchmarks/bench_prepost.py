"""Pre/postprocessing against the network on one 240x240x155 phantom, in one process.

Per round, in turns: preprocessing (crop, z-score, order-3 resampling), the network (the
chosen engine, no TTA), the postprocessing the labels need (probabilities resampled back to the
crop, argmax into labels) and the whole ``finish_case`` step as ``/analyze`` runs it (also
island removal and the float16 probabilities pasted onto the full grid). Medians over
``--runs`` rounds after one warm-up; pre + post as a share of the network (issue #21's target:
<= 25 %).

``--baseline-tree PATH`` also times that tree's ``cerebrascan/imaging/preprocess.py`` and
``postprocess.py`` (e.g. ``git archive HEAD | tar -x -C /tmp/cs_head``) on the same case and
network output, interleaved, and ``--label-seeds`` checks on further phantoms that both give
the same labels and z-scored network input.

    .venv/bin/python benchmarks/bench_prepost.py --runs 5 --baseline-tree /tmp/cs_head \\
        --label-seeds 31337 101 202 303 404 505 [--out benchmarks/results/prepost.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import psutil

from cerebrascan.imaging import postprocess, preprocess
from cerebrascan.imaging.array_pool import default_pool
from cerebrascan.inputs.study import Study
from cerebrascan.phantoms.generator import generate_case
from cerebrascan.segmentation import finish_case, predict_case
from cerebrascan.settings import Settings
from runners.engine_cache import cpu_features
from runners.factory import build_runner
from runners.settings import RunnerSettings
from schemas.model_spec import ModelSpec

logger = logging.getLogger("bench_prepost")

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"


def phantom_study(seed: int, spec: ModelSpec) -> Study:
    """The phantom of ``seed`` (240x240x155, 1 mm) as a study in the network's modality order."""
    case = generate_case(seed, f"BENCH-{seed}")
    images = np.stack([case.images[m] for m in spec.modalities]).astype(np.float32)
    return Study(images=images, affine=case.affine, modalities=tuple(spec.modalities))


def baseline_modules(tree: Path, workdir: Path) -> tuple[ModuleType, ModuleType]:
    """The tree's preprocess and postprocess modules, importable beside this checkout's.

    They are copied into a package of their own with postprocess's import of preprocess
    pointed at the copy.
    """
    package = workdir / "baseline_imaging"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(tree / "cerebrascan" / "imaging" / "preprocess.py", package)
    source = (tree / "cerebrascan" / "imaging" / "postprocess.py").read_text()
    (package / "postprocess.py").write_text(
        source.replace("from cerebrascan.imaging.preprocess", "from baseline_imaging.preprocess")
    )
    sys.path.insert(0, str(workdir))
    return (
        importlib.import_module("baseline_imaging.preprocess"),
        importlib.import_module("baseline_imaging.postprocess"),
    )


def timed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """(milliseconds, result) of ``call(*args, **kwargs)``."""
    clock = time.perf_counter()
    result = call(*args, **kwargs)
    return (time.perf_counter() - clock) * 1000, result


def preprocess_with(pre: ModuleType, study: Study, spec: ModelSpec) -> Any:
    return pre.preprocess_images(study.images, study.spacing, spec.target_spacing_mm)


def labels_with(post: ModuleType, prediction: Any, case: Any, spec: ModelSpec) -> Any:
    """What the labels need: probabilities back on the crop, argmax into label values (channel
    by channel where ``post`` has that path)."""
    if hasattr(post, "labels_and_probabilities_on_input_grid"):
        labels, _ = post.labels_and_probabilities_on_input_grid(
            prediction.probabilities, case, spec.output_labels, keep_probabilities=False
        )
        return labels
    cropped = post.probabilities_to_input_grid(prediction.probabilities, case)
    return post.labels_on_input_grid(cropped, case, spec.output_labels)


def finish_with(post: ModuleType, study: Study, spec: ModelSpec, case: Any, prediction: Any) -> Any:
    """``finish_case`` (keep_probabilities, islands under 0.05 mL) from ``post``'s functions."""
    cropped = post.probabilities_to_input_grid(prediction.probabilities, case)
    labels = post.labels_on_input_grid(cropped, case, spec.output_labels)
    post.remove_small_components(labels, study.spacing, 0.05)
    return post.probabilities_on_input_grid(cropped, case, spec.output_labels)


def labels_of(
    pre: ModuleType, post: ModuleType, study: Study, spec: ModelSpec, runner: Any
) -> tuple[Any, Any]:
    """The network input and the labels of ``study`` through ``pre`` and ``post``."""
    case = preprocess_with(pre, study, spec)
    prediction = predict_case(case, runner, mirror_tta=False)
    return case.data, labels_with(post, prediction, case, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=777, help="phantom seed of the timed case")
    parser.add_argument("--engine", default="openvino", help="runner.engine of the network")
    parser.add_argument("--baseline-tree", type=Path, help="also time this tree's imaging code")
    parser.add_argument("--label-seeds", type=int, nargs="*", default=[])
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument(
        "--array-pool-mb",
        type=float,
        default=Settings().bounds.array_pool_mb,
        help="the process's array pool, as a server worker sets it (0: off)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    default_pool().configure(int(args.array_pool_mb * (1 << 20)))
    workdir = Path(tempfile.mkdtemp(prefix="bench-prepost-"))
    spec = ModelSpec.model_validate_json((DEFAULT_MODEL / "model_spec.json").read_text())
    runner = build_runner(
        DEFAULT_MODEL, spec, RunnerSettings(engine=args.engine), workdir / "engine-cache"
    )
    contenders = {"current": (preprocess, postprocess)}
    if args.baseline_tree:
        contenders["baseline"] = baseline_modules(args.baseline_tree, workdir)
    study = phantom_study(args.seed, spec)
    times: dict[str, list[float]] = {"network": []}
    for name in contenders:
        for stage in ("preprocess", "post_labels", "finish_case"):
            times[f"{name}.{stage}"] = []
    for round_index in range(args.runs + 1):
        measured: dict[str, float] = {}
        for name, (pre, _) in contenders.items():
            measured[f"{name}.preprocess"], case = timed(preprocess_with, pre, study, spec)
        measured["network"], prediction = timed(predict_case, case, runner, mirror_tta=False)
        for name, (_, post) in contenders.items():
            measured[f"{name}.post_labels"], _ = timed(labels_with, post, prediction, case, spec)
            if name == "current":  # the stage itself
                measured[f"{name}.finish_case"], _ = timed(
                    finish_case,
                    study,
                    spec,
                    case,
                    prediction,
                    keep_probabilities=True,
                    min_component_ml=0.05,
                )
            else:
                measured[f"{name}.finish_case"], _ = timed(
                    finish_with, post, study, spec, case, prediction
                )
        if round_index == 0:
            continue  # warm-up
        for key, value in measured.items():
            times[key].append(value)
        logger.info("round %d: %s", round_index, {k: round(v) for k, v in measured.items()})
    medians = {key: statistics.median(values) for key, values in times.items()}
    shares = {
        name: (medians[f"{name}.preprocess"] + medians[f"{name}.post_labels"]) / medians["network"]
        for name in contenders
    }
    label_checks = []
    if args.baseline_tree:
        for seed in [args.seed, *args.label_seeds]:
            other = phantom_study(seed, spec)
            data_new, labels_new = labels_of(preprocess, postprocess, other, spec, runner)
            data_old, labels_old = labels_of(*contenders["baseline"], other, spec, runner)
            label_checks.append(
                {
                    "seed": seed,
                    "network_input_identical": bool(np.array_equal(data_new, data_old)),
                    "differing_label_voxels": int((labels_new != labels_old).sum()),
                    "tumour_voxels": int((labels_old > 0).sum()),
                }
            )
            logger.info("labels: %s", label_checks[-1])
    results = {
        "runs": args.runs,
        "engine": args.engine,
        "array_pool_mb": args.array_pool_mb,
        "case": {"seed": args.seed, "shape": list(study.shape), "spacing": list(study.spacing)},
        "median_ms": medians,
        "all_ms": times,
        "pre_plus_post_share_of_network": shares,
        "label_checks": label_checks,
        "machine": {
            "cpus": psutil.cpu_count(),
            "cpu_flags": list(cpu_features()),
            "load_average": list(psutil.getloadavg()),
        },
    }
    sys.stdout.write(json.dumps(results, indent=2) + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
