"""Per-tile network time on CPU: ONNX Runtime vs PyTorch variants, same nnU-Net weights.

With ``--openvino``: the bundled model under OpenVINO, as read from ONNX vs rewritten by
``runners.openvino_graph.prepare_network`` (zero-channel padding), fp32 and (where the CPU has
it) bf16, each tile batch size, timed in interleaved rounds (median of ``--repeats``), with the
logits' distance to ONNX Runtime fp32 on the guard's reference tile and OpenVINO's per-layer
profile (PERF_COUNT, share of time per layer type and kernel) of each variant (issue #21).
``--streams N`` adds each variant compiled for N streams (``PERFORMANCE_HINT: THROUGHPUT``, the
threads shared out among them) with a call in flight on each (an ``AsyncInferQueue`` of N jobs),
timed as wall time per tile, against one stream running one call at a time (the served default):

    .venv/bin/python benchmarks/bench_tile_engines.py --openvino --batch 2 4 --repeats 7

Why CerebraScan's CPU speed-up over nnUNetPredictor is what it is (issue #3): both spend nearly
all their time in the network, so the ratio is the engines' ratio. Builds the "small" nnU-Net
network of ``bench_nnunet.py`` (random weights, nnU-Net's own architecture), imports it with
``cerebrascan.training.nnunet_import`` and times one forward pass per engine on a (B, 4, 96, 96, 96)
input, median of 3 after one warm-up; also ORT's per-operator profile.

    .venv/bin/python benchmarks/bench_tile_engines.py --batch 1 2 4 8
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def _median_s(fn: Callable[[], Any], repeats: int = 3) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def _ort_session(onnx_path: Path, profile_prefix: str | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


CALLS_PER_STREAM = 3
"""Calls queued per stream when a multi-stream variant is timed."""


def _openvino_variants(
    batches: list[int], repeats: int, model_dir: Path, streams: list[int]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Per-tile ms of the bundled network under OpenVINO, plain vs rewritten, interleaved.

    Variants with ``streams`` > 1 are timed over ``CALLS_PER_STREAM`` calls per stream in flight
    at once (their per-tile ms is the wall time over all those tiles)."""
    import openvino as ov

    from runners.engine_cache import cpu_features
    from runners.openvino_graph import channel_multiple_for, prepare_network
    from runners.precision_guard import reference_tile
    from schemas.model_spec import ModelSpec

    core = ov.Core()
    spec = ModelSpec.model_validate_json((model_dir / "model_spec.json").read_text())
    onnx_path = model_dir / "model.onnx"
    precisions = ["f32"]
    if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        precisions.append("bf16")
    multiple = channel_multiple_for(cpu_features(), "bf16")
    rows: list[dict[str, Any]] = []
    requests: dict[tuple[str, str, int], Any] = {}
    queues: dict[tuple[str, str, int, int], Any] = {}
    inputs: dict[int, np.ndarray] = {}
    for batch in batches:
        tiles = reference_tile(spec, batch)
        inputs[batch] = tiles
        reference = _ort_session(onnx_path).run(None, {spec.input_name: tiles})[0]
        for variant in ("as read", f"padded to {multiple}"):
            for precision in precisions:
                network = core.read_model(onnx_path)
                if variant != "as read":
                    network = prepare_network(network, multiple)
                network.reshape({spec.input_name: [batch, *tiles.shape[1:]]})
                compiled = core.compile_model(
                    network,
                    "CPU",
                    {
                        "PERFORMANCE_HINT": "LATENCY",
                        "INFERENCE_PRECISION_HINT": precision,
                        "NUM_STREAMS": 1,
                        "PERF_COUNT": True,
                    },
                )
                request = compiled.create_infer_request()
                request.infer({0: tiles})
                logits = np.array(request.get_output_tensor(0).data)
                rows.append(
                    {
                        "engine": f"openvino {precision} {variant}",
                        "batch": batch,
                        "relative_max_logit_difference_vs_ort": float(
                            np.abs(logits - reference).max() / np.abs(reference).max()
                        ),
                        "label_agreement_vs_ort": float(
                            (logits.argmax(1) == reference.argmax(1)).mean()
                        ),
                    }
                )
                requests[(precision, variant, batch)] = request
                for count in streams:
                    if count > 1:
                        queues[(precision, variant, batch, count)] = _stream_queue(
                            core, network, precision, count, tiles
                        )
    seconds: dict[tuple[str, str, int], list[float]] = collections.defaultdict(list)
    stream_seconds: dict[tuple[str, str, int, int], list[float]] = collections.defaultdict(list)
    for _ in range(repeats):
        for key, request in requests.items():
            start = time.perf_counter()
            request.infer({0: inputs[key[2]]})
            seconds[key].append(time.perf_counter() - start)
        for stream_key, queue in queues.items():
            start = time.perf_counter()
            for _ in range(CALLS_PER_STREAM * stream_key[3]):
                queue.start_async({0: inputs[stream_key[2]]})
            queue.wait_all()
            stream_seconds[stream_key].append(time.perf_counter() - start)
    profiles: dict[str, dict[str, float]] = {}
    for (precision, variant, batch), request in requests.items():
        per_kind: collections.Counter[str] = collections.Counter()
        for layer in request.get_profiling_info():
            per_kind[f"{layer.node_type}/{layer.exec_type}"] += layer.real_time.total_seconds()
        total = sum(per_kind.values())
        name = f"openvino {precision} {variant}"
        profiles[f"{name}, batch {batch}"] = {
            kind: round(100 * t / total, 1) for kind, t in per_kind.most_common() if t > 0
        }
        runs = seconds[(precision, variant, batch)]
        row = next(r for r in rows if r["engine"] == name and r["batch"] == batch)
        row["ms_per_tile"] = statistics.median(runs) / batch * 1e3
        row["ms_per_tile_min"] = min(runs) / batch * 1e3
    for (precision, variant, batch, count), runs in stream_seconds.items():
        tiles_timed = CALLS_PER_STREAM * count * batch
        rows.append(
            {
                "engine": f"openvino {precision} {variant}, {count} streams",
                "batch": batch,
                "ms_per_tile": statistics.median(runs) / tiles_timed * 1e3,
                "ms_per_tile_min": min(runs) / tiles_timed * 1e3,
            }
        )
    return rows, profiles


def _stream_queue(core: Any, network: Any, precision: str, streams: int, tiles: np.ndarray) -> Any:
    """``network`` compiled for ``streams`` streams, as an ``AsyncInferQueue`` of as many jobs
    (warmed up once per job)."""
    import openvino as ov

    compiled = core.compile_model(
        network,
        "CPU",
        {
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": precision,
            "NUM_STREAMS": streams,
        },
    )
    queue = ov.AsyncInferQueue(compiled, streams)
    for _ in range(streams):
        queue.start_async({0: tiles})
    queue.wait_all()
    return queue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--openvino",
        action="store_true",
        help="time the bundled model under OpenVINO, as read vs rewritten (issue #21)",
    )
    parser.add_argument("--repeats", type=int, default=7, help="--openvino: interleaved rounds")
    parser.add_argument("--model-dir", type=Path, default=REPO / "models" / "default")
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=[1],
        help="--openvino: also time each variant with this many streams in flight (1: only the "
        "one-call-at-a-time rows)",
    )
    args = parser.parse_args()
    if args.openvino:
        rows, profiles = _openvino_variants(args.batch, args.repeats, args.model_dir, args.streams)
        for row in rows:
            accuracy = (
                f", max |dlogit| / max |logit| vs ORT "
                f"{row['relative_max_logit_difference_vs_ort']:.1e}, labels "
                f"{row['label_agreement_vs_ort']:.6f}"
                if "label_agreement_vs_ort" in row
                else ""
            )
            print(
                f"{row['engine']:44s} batch {row['batch']}: {row['ms_per_tile']:6.1f} ms/tile "
                f"(min {row['ms_per_tile_min']:.1f}){accuracy}"
            )
        for name, profile in profiles.items():
            print(f"{name}: " + "; ".join(f"{k} {v}%" for k, v in profile.items()))
        if args.out:
            args.out.write_text(json.dumps({"rows": rows, "profiles": profiles}, indent=2) + "\n")
        return

    import torch
    from bench_nnunet import write_nnunet_folder
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from cerebrascan.training.nnunet_import import build_nnunet_model_folder

    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="cerebrascan-tiles-"))
    source = write_nnunet_folder(root / "nnunet", "small")
    imported = build_nnunet_model_folder(source, root / "imported")
    onnx_path = next(imported.folder.glob("*.onnx"))
    plans = PlansManager(json.loads((source / "plans.json").read_text()))
    network = nnUNetTrainer.build_network_architecture(
        plans, plans.get_configuration("3d_fullres"), 4, 3, enable_deep_supervision=False
    )
    checkpoint = torch.load(
        source / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False
    )
    network.load_state_dict(checkpoint["network_weights"])
    network.eval()

    rows: list[dict[str, Any]] = []
    session = _ort_session(onnx_path)
    input_name = session.get_inputs()[0].name
    for batch in args.batch:
        x = np.random.default_rng(0).normal(size=(batch, 4, 96, 96, 96)).astype(np.float32)
        reference = session.run(None, {input_name: x})[0]
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            eager = network(xt).numpy()
            timings = {
                "onnxruntime": _median_s(lambda s=session, i=input_name, v=x: s.run(None, {i: v})),
                "torch eager": _median_s(lambda n=network, t=xt: n(t)),
            }
            network.to(memory_format=torch.channels_last_3d)
            xcl = xt.to(memory_format=torch.channels_last_3d)
            timings["torch channels_last_3d"] = _median_s(lambda n=network, t=xcl: n(t))
            network.to(memory_format=torch.contiguous_format)
        for name, seconds in timings.items():
            rows.append({"engine": name, "batch": batch, "ms_per_tile": seconds / batch * 1e3})
        with torch.no_grad():
            frozen = torch.jit.optimize_for_inference(
                torch.jit.freeze(torch.jit.trace(network, xt))
            )
            seconds = _median_s(lambda f=frozen, t=xt: f(t))
        rows.append(
            {
                "engine": "torch jit freeze + optimize_for_inference",
                "batch": batch,
                "ms_per_tile": seconds / batch * 1e3,
            }
        )
        rows.append(
            {
                "engine": "max |torch - ort|",
                "batch": batch,
                "value": float(np.abs(eager - reference).max()),
            }
        )

    profiled = _ort_session(onnx_path, str(root / "ort-profile"))
    x = np.random.default_rng(0).normal(size=(1, 4, 96, 96, 96)).astype(np.float32)
    for _ in range(3):
        profiled.run(None, {input_name: x})
    events = json.loads(Path(profiled.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values())
    profile = {op: round(100 * us / total, 1) for op, us in per_op.most_common()}

    for row in rows:
        figure = (
            f"{row['ms_per_tile']:.0f} ms/tile" if "ms_per_tile" in row else f"{row['value']:.1e}"
        )
        print(f"{row['engine']:45s} batch {row['batch']}: {figure}")
    print("ORT operator share of kernel time (batch 1):", profile)
    if args.out:
        args.out.write_text(
            json.dumps({"rows": rows, "ort_profile_percent": profile}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
