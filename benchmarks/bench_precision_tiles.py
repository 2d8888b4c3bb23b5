"""Per-tile network time of the OpenVINO engine at fp32, bf16 and int8 on the bundled model.

One process, the precisions interleaved (round r runs each once), median of ``--repeats``
after a warm-up; the batch is the reference tile repeated ``--batch`` times. Also printed: each
reduced precision's reference-tile guard figures against ONNX Runtime fp32 (agreement, max
|dp|; the held-out half is ``bench_nnunet.py --held-out``). bf16 needs a CPU with BF16, int8
``models/default/model.int8.xml`` (``cerebrascan pipeline quantize``).

Usage:
    python benchmarks/bench_precision_tiles.py --repeats 9 --batch 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--guard-min-agreement",
        type=float,
        default=None,
        help="runner.precision_guard_min_agreement (default: the setting's); lower it to time a "
        "precision the guard refuses (the figures then say so: 'served')",
    )
    args = parser.parse_args()

    from runners.engine_cache import cpu_features
    from runners.openvino_runner import OpenVINOSegmentationRunner
    from runners.precision_guard import reference_tile
    from runners.settings import RunnerSettings
    from schemas.model_spec import ModelSpec

    folder = REPO / "models" / "default"
    spec = ModelSpec.model_validate_json((folder / "model_spec.json").read_text())
    tiles = reference_tile(spec, batch=args.batch)
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as cache:
        runners = {
            precision: OpenVINOSegmentationRunner(
                folder / "model.onnx",
                spec,
                RunnerSettings(
                    engine="openvino",
                    precision=precision,
                    tile_batch_size=args.batch,
                    **(
                        {}
                        if args.guard_min_agreement is None
                        else {"precision_guard_min_agreement": args.guard_min_agreement}
                    ),
                ),
                Path(cache),
                require_held_out_record=False,
            )
            for precision in args.precisions
        }
        times: dict[str, list[float]] = {p: [] for p in runners}
        for round_index in range(args.repeats + 1):
            for precision, runner in runners.items():
                start = time.perf_counter()
                runner.predict_tiles(tiles)
                elapsed = (time.perf_counter() - start) * 1000 / args.batch
                if round_index:
                    times[precision].append(elapsed)
    rows = {
        precision: {
            "served": runner.precision,
            "per_tile_ms_median": statistics.median(times[precision]),
            "per_tile_ms_runs": times[precision],
            "reference_tile_agreement": runner.decision.argmax_agreement,
            "reference_tile_max_dp": runner.decision.max_probability_difference,
            "note": runner.decision.note,
        }
        for precision, runner in runners.items()
    }
    setup = (
        f"batch {args.batch}, {args.repeats} interleaved rounds, guard min agreement "
        f"{args.guard_min_agreement or RunnerSettings().precision_guard_min_agreement}, CPU flags "
        f"{' '.join(cpu_features())}, load average at start / end {load_at_start} / "
        f"{os.getloadavg()}"
    )
    print(setup)
    for precision, row in rows.items():
        print(
            f"{precision:5s} served {row['served']:5s} {row['per_tile_ms_median']:8.1f} ms/tile  "
            f"agreement {row['reference_tile_agreement']}  max|dp| {row['reference_tile_max_dp']}"
            + (f"  note: {row['note']}" if row["note"] else "")
        )
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
