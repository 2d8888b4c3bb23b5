"""Per-tile network time on CPU: ONNX Runtime vs PyTorch variants, same nnU-Net weights.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()

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
