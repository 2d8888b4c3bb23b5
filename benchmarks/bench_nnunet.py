"""CerebraScan's runner vs nnU-Net v2's ``nnUNetPredictor``: same weights, same case, one process.

An nnU-Net v2 training folder is written with random weights (nnU-Net's own
``build_network_architecture`` and checkpoint format) from ``benchmarks/data/
nnunet_plans_template.json`` with the chosen architecture; it is imported with
``cerebrascan.training.nnunet_import`` exactly as ``cerebrascan import-nnunet`` does, and both
predict the same brain-sized case at 1 mm (nnU-Net's BraTS spacing: no resampling, so the
network dominates).

Timed: the whole per-case prediction — nnU-Net's ``predict_single_npy_array`` (preprocess,
sliding window, export) vs CerebraScan's ``segment_study`` (preprocess, runner, postprocess) —
median of ``--repeats`` after one warm-up, the contenders interleaved (round r runs each once,
so a load change on a shared machine hits all alike). Agreement: fraction of voxels with the
same label. Also printed: the CPU's instruction-set flags that engines depend on, and each
contender's peak RSS (sampled every 20 ms during its runs; the process's high-water mark).

Networks:
    brats  nnU-Net's BraTS 3d_fullres PlainConvUNet (6 stages, 32-320 features, patch 128^3,
           965 GFLOP per patch): the network of ../shared/bench (GPU).
    small  5 stages, 16-256 features, patch 96^3: the same family, sized so a CPU run takes
           minutes, not hours (a 128^3 patch of the BraTS net takes ~16-19 s on 2 cores).
    default-trained
           TRAINED weights: the bundled model (models/default, PlainConvUNet 12-96, patch 64^3
           at 1.5 mm, trained on phantoms as its model card records) loaded into the network
           nnU-Net builds from the plans and saved as an nnU-Net checkpoint (kept in
           benchmarks/.cache). Random weights give near-tied logits that any reduced precision
           flips; trained ones make label agreement and the precision guard mean something.
           Use it with ``--case phantom``: a held-out phantom of the model's test cohort
           (seed 2000), resampled to 1.5 mm and cropped to the head before timing, with its
           true labels (Dice per BraTS region printed); ``--held-out N`` segments N more
           phantoms untimed and runs the guard's held-out check on each reduced precision.

The reduced precisions (``openvino-bf16``, ``openvino-int8``) are built with the guard's
reference-tile half only: their held-out half is what ``--held-out`` measures here (the imported
folder has no ``precisions.json``). ``openvino-int8`` runs the shipped int8 IR
(``models/default/model.int8.xml``, ``cerebrascan pipeline quantize``) copied into the imported
folder, so only with ``--network default-trained`` (the same trained weights); the guard compares
it with ONNX Runtime fp32 on the imported ONNX, so a mismatched IR would be refused, not timed.

The ratio on CPU depends on the C allocator's setting, which the header prints. With glibc's
defaults freed memory goes back to the system, and nnUNetPredictor's next tile faults its
activations in again (inferred from the timings, not traced). Keeping freed memory
(``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736``, docs/serving.md)
made it 1.2-1.3x faster, while CerebraScan's engines, which hold their buffers, did not change
(benchmarks/README.md, "Whose memory setting"). Run both.

Usage:
    python benchmarks/bench_nnunet.py --device cpu --network small
    python benchmarks/bench_nnunet.py --device cpu --network small --case tiny --tta off \
        --repeats 5 --engines onnxruntime openvino-fp32 openvino-bf16
    python benchmarks/bench_nnunet.py --device cpu --network default-trained --case phantom \
        --tta off --repeats 7 --engines onnxruntime openvino-fp32 openvino-bf16 openvino-int8 \
        --held-out 3
    python benchmarks/bench_nnunet.py --device cuda --network brats --engines torch-fp16 \
        torch-fp16-compile
Prints a table; with ``--json PATH`` (or $OUT set) also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

logger = logging.getLogger("bench_nnunet")

NETWORKS: dict[str, dict[str, Any]] = {
    "brats": {"features": [32, 64, 128, 256, 320, 320], "patch": [128, 128, 128]},
    "small": {"features": [16, 32, 64, 128, 256], "patch": [96, 96, 96]},
    # The bundled model's TRAINED weights (models/default: nnU-Net's PlainConvUNet 12-96, trained
    # on phantoms, see its model card) in nnU-Net's checkpoint format: labels, not regions.
    "default-trained": {
        "features": [12, 24, 48, 96],
        "patch": [64, 64, 64],
        "spacing": [1.5, 1.5, 1.5],
        "weights": "models/default/network.safetensors",
    },
}
CASES = {"crop": (4, 140, 172, 140), "full": (4, 155, 240, 240), "tiny": (4, 112, 112, 104)}
PHANTOM_CASE = "phantom"
"""Case name of a held-out phantom (seed :data:`HELD_OUT_SEED`, case 0) resampled to the
network's spacing and cropped to the head outside the timing (no resampling in either contender)."""
HELD_OUT_SEED = 2000
"""The default model's held-out phantom cohort (its model card): never trained on."""
CACHE = REPO / "benchmarks" / ".cache"
BRATS_LABELS = {"background": 0, "NETC": 1, "SNFH": 2, "ET": 3}
ENGINES = (
    "onnxruntime",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
    "torch-fp32",
    "torch-fp16",
    "torch-fp16-compile",
    "torch-bf16",
)


class PeakRss:
    """The largest RSS of this process seen while ``label`` was running (sampled every 20 ms)."""

    def __init__(self) -> None:
        import threading

        import psutil

        self._process = psutil.Process()
        self.label = ""
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            if self.label:
                rss = self._process.memory_info().rss
                self.peaks[self.label] = max(self.peaks.get(self.label, 0), rss)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _plans(network: str) -> dict[str, Any]:
    template = json.loads((REPO / "benchmarks" / "data" / "nnunet_plans_template.json").read_text())
    plans = copy.deepcopy(template)
    config = plans["configurations"]["3d_fullres"]
    shape = NETWORKS[network]
    stages = len(shape["features"])
    config["patch_size"] = shape["patch"]
    config["spacing"] = shape.get("spacing", [1.0, 1.0, 1.0])
    config["architecture"]["arch_kwargs"].update(
        n_stages=stages,
        features_per_stage=shape["features"],
        kernel_sizes=[[3, 3, 3]] * stages,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
        n_conv_per_stage=[2] * stages,
        n_conv_per_stage_decoder=[2] * (stages - 1),
    )
    return plans


def write_nnunet_folder(root: Path, network: str) -> Path:
    """An nnU-Net v2 results folder (plans, dataset, fold_0 checkpoint).

    Random weights (seed 0, BraTS regions) for the architecture-only networks; for a network
    with ``weights`` the trained safetensors are loaded (strictly) into the network nnU-Net
    builds from the plans, with BraTS labels as classes.
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = _plans(network)
    trained = NETWORKS[network].get("weights")
    dataset: dict[str, Any] = {
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "ET": [3]},
        "regions_class_order": [2, 1, 3],
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    if trained:
        dataset["labels"] = dict(BRATS_LABELS)
        del dataset["regions_class_order"]
    manager = PlansManager(plans)
    config = manager.get_configuration("3d_fullres")
    torch.manual_seed(0)
    net = nnUNetTrainer.build_network_architecture(
        manager, config, 4, len(BRATS_LABELS) if trained else 3, enable_deep_supervision=False
    )
    if trained:
        from safetensors.torch import load_model

        load_model(net, str(REPO / trained), strict=True)
    folder = root / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    torch.save(
        {
            "network_weights": net.state_dict(),
            "optimizer_state": None,
            "grad_scaler_state": None,
            "logging": {},
            "_best_ema": None,
            "current_epoch": 1,
            "init_args": {
                "plans": plans,
                "configuration": "3d_fullres",
                "fold": 0,
                "dataset_json": dataset,
                "device": torch.device("cpu"),
            },
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
        },
        folder / "fold_0" / "checkpoint_final.pth",
    )
    return folder


def brain_case(shape: tuple[int, ...]) -> np.ndarray:
    """Smooth noise inside an ellipsoidal 'head' (zero outside, as skull-stripped BraTS is)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    image = gaussian_filter(rng.standard_normal(shape), sigma=(0, 2, 2, 2)).astype(np.float32)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[1:]], indexing="ij")
    head = sum(g**2 for g in grid) < 0.95
    image *= head
    image[:, head] += np.linspace(1, 4, shape[0])[:, None]
    return np.ascontiguousarray(image)


def phantom_case(index: int, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Held-out phantom ``index`` (seed :data:`HELD_OUT_SEED`) at ``spacing``, cropped to the head.

    Images ``(4, x, y, z)`` float32 (t1n, t1c, t2w, t2f; cubic resampling) and the true labels
    (nearest neighbour), cached in ``benchmarks/.cache`` (generating one takes ~25 s).
    """
    from scipy.ndimage import zoom

    CACHE.mkdir(parents=True, exist_ok=True)
    cached = CACHE / f"phantom-{HELD_OUT_SEED}-{index}-{'x'.join(map(str, spacing))}mm.npz"
    if cached.exists():
        with np.load(cached, allow_pickle=False) as data:
            return data["images"], data["labels"]
    from cerebrascan.phantoms.contrasts import MODALITIES
    from cerebrascan.phantoms.generator import case_seed, generate_case

    case = generate_case(case_seed(HELD_OUT_SEED, index), f"BENCH-{index:05d}")
    factors = [abs(case.affine[a, a]) / spacing[a] for a in range(3)]
    images = np.stack(
        [zoom(case.images[m].astype(np.float32), factors, order=3) for m in MODALITIES]
    )
    labels = zoom(case.segmentation, factors, order=0)
    # The head mask at 1 mm, resampled by nearest neighbour: cubic ringing stays outside.
    head = zoom(sum(np.abs(case.images[m]) for m in MODALITIES) > 0, factors, order=0)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(head))
    images = np.ascontiguousarray(images[(slice(None), *box)] * head[box])
    labels = np.ascontiguousarray(labels[box])
    np.savez(cached, images=images, labels=labels)
    return images, labels


def _interleaved(
    contenders: dict[str, Any], repeats: int, sync: Any, warmup: int, memory: PeakRss
) -> dict[str, tuple[float, list[float], Any]]:
    """Median seconds, every run and the last result of each contender, run in turns."""
    results: dict[str, Any] = {}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(warmup + repeats):
        for name, fn in contenders.items():
            sync()
            memory.label = name
            start = time.perf_counter()
            results[name] = fn()
            sync()
            elapsed = time.perf_counter() - start
            memory.label = ""
            if round_index >= warmup:
                times[name].append(elapsed)
    return {name: (statistics.median(times[name]), times[name], results[name]) for name in times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--network", choices=tuple(NETWORKS), default="small")
    parser.add_argument("--case", choices=(*CASES, PHANTOM_CASE), default="crop")
    parser.add_argument("--tta", choices=("off", "on", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--tile-batch", type=int, default=0, help="0: 2 on CPU, 8 on CUDA")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--fp32-reference",
        action="store_true",
        help="also compare with nnUNetPredictor accumulating in fp32 (untimed; nnU-Net's stock "
        "fp16 accumulator flips near-tied voxels, many with random weights)",
    )
    parser.add_argument(
        "--guard-max-dp",
        type=float,
        default=None,
        help="runner.precision_guard_max_probability_difference for every engine (default: the "
        "setting's default); the guard's agreement bound stays the default",
    )
    parser.add_argument(
        "--guard-min-agreement",
        type=float,
        default=None,
        help="runner.precision_guard_min_agreement for every engine (default: the setting's, "
        "0.999); lower it to time a reduced precision the guard refuses (rows name the "
        "precision served)",
    )
    parser.add_argument(
        "--held-out",
        type=int,
        default=0,
        help="with a trained network: segment this many more held-out phantoms (untimed) with "
        "every engine and check each reduced precision's labels against the first fp32 "
        "engine's (the guard's Dice bound per region)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    import torch

    from cerebrascan.inputs.study import Study
    from cerebrascan.segmentation import segment_study
    from cerebrascan.testing.nnunet_reference import fp32_accumulation, quiet_predictor
    from cerebrascan.training.nnunet_import import build_nnunet_model_folder
    from runners.factory import build_runner
    from runners.openvino_runner import OpenVINOSegmentationRunner
    from runners.settings import RunnerSettings
    from schemas.model_spec import ModelSpec

    engines = args.engines or (
        ["onnxruntime"] if args.device == "cpu" else ["torch-fp16", "torch-fp16-compile"]
    )
    tile_batch = args.tile_batch or (2 if args.device == "cpu" else 8)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    # nnUNetPredictor turns cudnn.benchmark on for CUDA; the torch engine does the same only
    # through its setting (runner.cuda_conv_algo_search=EXHAUSTIVE), passed below, so the
    # benchmark times the configuration serving can use and says so in its rows.
    conv_search = "EXHAUSTIVE" if args.device == "cuda" else "HEURISTIC"
    rows: list[dict[str, Any]] = []
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        trained = "weights" in NETWORKS[args.network]
        if trained:
            # Trained weights: the nnU-Net folder is kept, so reruns time the same checkpoint.
            source = CACHE / f"nnunet-{args.network}" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
            if not (source / "fold_0" / "checkpoint_final.pth").exists():
                write_nnunet_folder(source.parent, args.network)
        else:
            source = write_nnunet_folder(root / "nnunet", args.network)
        imported = build_nnunet_model_folder(source, root / "imported")
        spec = ModelSpec.model_validate_json((imported.folder / "model_spec.json").read_text())
        spacing = tuple(float(v) for v in NETWORKS[args.network].get("spacing", [1.0] * 3))
        truth = None
        if args.case == PHANTOM_CASE:
            image, truth = phantom_case(0, spacing)  # type: ignore[arg-type]
        else:
            image = brain_case(CASES[args.case])
        study = Study(
            images=image, affine=np.diag([*spacing, 1.0]), modalities=tuple(spec.modalities)
        )
        if "openvino-int8" in engines:
            if not trained:
                parser.error(
                    "openvino-int8 runs the shipped int8 IR: use --network default-trained"
                )
            for name in ("model.int8.xml", "model.int8.bin"):
                shutil.copy(REPO / "models" / "default" / name, imported.folder / name)
        memory = PeakRss()
        runners = {}
        for engine in engines:
            name, _, rest = engine.partition("-")
            precision = rest.split("-")[0] if rest else "fp32"
            settings = RunnerSettings(
                engine=name if name in ("onnxruntime", "openvino") else "torch",  # type: ignore[arg-type]
                device=args.device if name == "torch" else "cpu",
                precision=precision,  # type: ignore[arg-type]
                torch_compile=engine.endswith("compile"),
                tile_batch_size=tile_batch,
                min_component_ml=0.0,
                cuda_conv_algo_search=conv_search,  # type: ignore[arg-type]
                **(
                    {}
                    if args.guard_max_dp is None
                    else {"precision_guard_max_probability_difference": args.guard_max_dp}
                ),
                **(
                    {}
                    if args.guard_min_agreement is None
                    else {"precision_guard_min_agreement": args.guard_min_agreement}
                ),
            )
            if name == "openvino" and precision != "fp32":
                # The guard's held-out half is --held-out's check below, not a record.
                runners[engine] = OpenVINOSegmentationRunner(
                    imported.folder / "model.onnx",
                    spec,
                    settings,
                    root / "engine-cache",
                    require_held_out_record=False,
                )
            else:
                runners[engine] = build_runner(
                    imported.folder, spec, settings, root / "engine-cache"
                )
        for tta in {"off": [False], "on": [True], "both": [False, True]}[args.tta]:
            predictor = quiet_predictor(source, (0,), mirroring=tta, device=args.device)
            nnunet_input = image.transpose(0, 3, 2, 1).copy()
            contenders: dict[str, Any] = {
                "nnUNetPredictor": lambda p=predictor, x=nnunet_input: p.predict_single_npy_array(
                    x, {"spacing": list(spacing[::-1])}, None, None, False
                )
            }
            for engine, runner in runners.items():
                contenders[engine] = lambda r=runner, t=tta: segment_study(study, r, mirror_tta=t)
            timed = _interleaved(contenders, args.repeats, sync, args.warmup, memory)
            reference_s, reference_all, reference_seg = timed["nnUNetPredictor"]
            reference_labels = np.asarray(reference_seg).transpose(2, 1, 0)
            fp32_labels = None
            if args.fp32_reference:
                with fp32_accumulation():
                    fp32_seg = predictor.predict_single_npy_array(
                        nnunet_input, {"spacing": list(spacing[::-1])}, None, None, False
                    )
                fp32_labels = np.asarray(fp32_seg).transpose(2, 1, 0)
            rows.append(
                {
                    "engine": "nnUNetPredictor",
                    "tta": tta,
                    "median_s": reference_s,
                    "runs_s": reference_all,
                    "speedup": 1.0,
                    "agreement": 1.0,
                    "dice_vs_truth": _dices(truth, reference_labels),
                    "peak_rss_mb": memory.peaks.get("nnUNetPredictor", 0) / 2**20,
                }
            )
            del predictor
            for engine, runner in runners.items():
                seconds, all_runs, result = timed[engine]
                rows.append(
                    {
                        "engine": f"cerebrascan {engine} (batch {tile_batch})",
                        "precision_used": runner.precision,
                        "precision_note": runner.decision.note,
                        "tta": tta,
                        "median_s": seconds,
                        "runs_s": all_runs,
                        "speedup": reference_s / seconds,
                        "agreement": float((result.labels == reference_labels).mean()),
                        "agreement_fp32_reference": None
                        if fp32_labels is None
                        else float((result.labels == fp32_labels).mean()),
                        "dice_vs_truth": _dices(truth, result.labels),
                        "stages_ms": result.timings_ms,
                        "peak_rss_mb": memory.peaks.get(engine, 0) / 2**20,
                    }
                )
        memory.close()
        held_out = _held_out_check(args.held_out, runners, spacing, spec, guard_bound=0.005)
        del runners
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else _cpu_name()
    from runners.engine_cache import cpu_features

    header = (
        f"network {args.network} {NETWORKS[args.network]}, case {args.case} "
        f"{(image.shape, spacing)}, "
        f"device {device_name}, CPU flags {' '.join(cpu_features())}, torch {torch.__version__}, "
        f"{args.repeats} interleaved runs, C allocator: {_allocator_setting()}, guard max |dp| "
        f"{args.guard_max_dp or RunnerSettings().precision_guard_max_probability_difference}, "
        f"guard min agreement "
        f"{args.guard_min_agreement or RunnerSettings().precision_guard_min_agreement}, "
        f"load average at start / end {load_at_start} / {os.getloadavg()}"
    )
    print(header)
    print(
        f"{'engine':40s} {'prec':>5s} {'tta':>5s} {'median s':>9s} {'speedup':>8s} "
        f"{'agree':>8s} {'agree fp32 ref':>14s} {'peak RSS MB':>11s}  stages ms"
    )
    for row in rows:
        fp32 = row.get("agreement_fp32_reference")
        stages = " ".join(f"{k} {v:.0f}" for k, v in row.get("stages_ms", {}).items())
        print(
            f"{row['engine']:40s} {row.get('precision_used', ''):>5s} {row['tta']!s:>5s} "
            f"{row['median_s']:9.3f} {row['speedup']:7.2f}x {row['agreement']:8.5f} "
            f"{'' if fp32 is None else f'{fp32:.5f}':>14s} {row['peak_rss_mb']:11.0f}  {stages}"
        )
        if row.get("precision_note"):
            print(f"    note: {row['precision_note']}")
        if row.get("dice_vs_truth"):
            print(f"    Dice vs the phantom's truth: {row['dice_vs_truth']}")
    target = args.json
    if target is None and "OUT" in os.environ:
        target = Path(os.environ["OUT"]) / "bench_nnunet.json"
    for engine, check in held_out.items():
        print(f"held-out phantoms, {engine}: {json.dumps(check)}")
    if target is not None:
        target.write_text(
            json.dumps({"setup": header, "rows": rows, "held_out": held_out}, indent=2)
        )


def _allocator_setting() -> str:
    """The glibc malloc settings this process was started with, or "glibc defaults"."""
    names = (
        "MALLOC_ARENA_MAX",
        "MALLOC_MMAP_MAX_",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "GLIBC_TUNABLES",
    )
    found = [f"{name}={os.environ[name]}" for name in names if name in os.environ]
    return " ".join(found) if found else "glibc defaults"


def _dices(truth: np.ndarray | None, labels: np.ndarray) -> dict[str, float] | None:
    """BraTS region Dice of ``labels`` against the phantom's true labels (None without one)."""
    from runners.precision_guard import region_dice
    from schemas.model_spec import BRATS_REGIONS

    if truth is None:
        return None
    return {name: region_dice(truth, labels, r) for name, r in BRATS_REGIONS.items()}


def _held_out_check(
    cases: int, runners: dict[str, Any], spacing: Any, spec: Any, *, guard_bound: float
) -> dict[str, Any]:
    """Every engine on ``cases`` held-out phantoms (indices 1..cases; untimed): mean Dice vs the
    truth and, for a reduced precision, the guard's held-out check against the first fp32
    engine (:func:`runners.precision_guard.compare_held_out_labels`)."""
    from cerebrascan.inputs.study import Study
    from cerebrascan.segmentation import segment_study
    from runners.precision_guard import compare_held_out_labels

    if cases <= 0 or not runners:
        return {}
    truths: list[np.ndarray] = []
    labels: dict[str, list[np.ndarray]] = {engine: [] for engine in runners}
    for index in range(1, cases + 1):
        image, truth = phantom_case(index, spacing)
        study = Study(
            images=image, affine=np.diag([*spacing, 1.0]), modalities=tuple(spec.modalities)
        )
        truths.append(truth)
        for engine, runner in runners.items():
            labels[engine].append(segment_study(study, runner, mirror_tta=False).labels)
    fp32 = next(e for e in runners if not e.endswith(("bf16", "fp16", "int8")))
    report: dict[str, Any] = {}
    for engine, runner in runners.items():
        dices = [_dices(t, x) for t, x in zip(truths, labels[engine])]
        entry: dict[str, Any] = {
            "precision_used": runner.precision,
            "mean_dice_vs_truth": {
                region: float(np.mean([d[region] for d in dices if d])) for region in dices[0] or {}
            },
        }
        if engine != fp32 and runner.decision.requested != "fp32":
            check = compare_held_out_labels(
                labels[fp32],
                labels[engine],
                requested=runner.decision.requested,
                max_dice_change=guard_bound,
            )
            entry.update(
                reference=fp32,
                reference_tile_agreement=runner.decision.argmax_agreement,
                reference_tile_max_dp=runner.decision.max_probability_difference,
                held_out_dice_change=check.dice_changes,
                held_out_passed=check.passed,
                note=check.note,
            )
        report[engine] = entry
    return report


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"cpu x{os.cpu_count()}"


if __name__ == "__main__":
    main()
