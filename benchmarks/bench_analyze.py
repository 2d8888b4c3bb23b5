"""End-to-end ``POST /analyze`` latency and server memory on a phantom case.

Starts a real ``bentoml serve`` per engine in ``--engines`` (unless ``--url`` names a running
one), posts the same 240x240x155 phantom case ``--runs`` times to each after one warm-up, the
servers taking turns (round r posts once to each, so load changes on a shared machine hit every
engine alike), and prints per engine the median and spread of the latency, the server-side
stage timings (preprocess / inference / postprocess ...) and the peak RSS of its process tree.

    .venv/bin/python benchmarks/bench_analyze.py --runs 5 --engines onnxruntime openvino \
        [--out benchmarks/results/analyze.json]

``--baseline-tree PATH`` also serves another source tree (e.g. an older commit unpacked with
``git archive 99ff0a0 | tar -x -C /tmp/cs_old``) with its own default settings, from this
environment (the tree first on ``PYTHONPATH``), as one more server taking its turn; each
engine's latency is then also given as a ratio to that baseline's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from cerebrascan.inputs.case_folder import modality_path
from cerebrascan.phantoms.writer import write_cohort
from cerebrascan.registry import ensure_default_model
from cerebrascan.settings import Settings
from cerebrascan.testing.server_process import (
    RunningServer,
    bentoml_server,
    free_port,
    stop_process,
    wait_until_ready,
)
from runners.engine_cache import cpu_features

logger = logging.getLogger("bench_analyze")


class PeakRss:
    """Samples the RSS of a process and its children every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                total = self.process.memory_info().rss + sum(
                    child.memory_info().rss for child in self.process.children(recursive=True)
                )
            except psutil.Error:
                total = 0
            self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def post_case(url: str, case: Path) -> tuple[float, dict[str, Any]]:
    files = {
        m: (f"{m}.nii.gz", modality_path(case, m).read_bytes(), "application/gzip")
        for m in ("t1n", "t1c", "t2w", "t2f")
    }
    clock = time.perf_counter()
    response = httpx.post(f"{url}/analyze", files=files, timeout=600)
    elapsed = time.perf_counter() - clock
    response.raise_for_status()
    return elapsed, response.json()


def measure(servers: dict[str, tuple[str, int | None]], case: Path, runs: int) -> dict[str, Any]:
    """Per server (name -> url, pid): latency, stage timings and peak RSS, in turns."""
    for url, _ in servers.values():
        post_case(url, case)  # warm-up: first-call allocations, ORT arena, OpenVINO compile
    latencies: dict[str, list[float]] = {name: [] for name in servers}
    stage_timings: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    runner: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        monitors = {
            name: stack.enter_context(PeakRss(pid)) for name, (_, pid) in servers.items() if pid
        }
        for _ in range(runs):
            for name, (url, _) in servers.items():
                elapsed, result = post_case(url, case)
                latencies[name].append(elapsed)
                stage_timings[name].append(result["timings_ms"])
                runner[name] = {
                    key: result["model"].get(key)
                    for key in ("runner", "providers", "precision", "precision_note")
                }
    engines = {}
    for name in servers:
        timings = stage_timings[name]
        stages = {k: statistics.median(t[k] for t in timings) for k in timings[0]}
        engines[name] = {
            "model": runner[name],
            "latency_s_median": statistics.median(latencies[name]),
            "latency_s_min": min(latencies[name]),
            "latency_s_max": max(latencies[name]),
            "stage_ms_median": stages,
            "stage_ms_runs": timings,
            "server_peak_rss_mb": (monitors[name].peak / 2**20) if name in monitors else None,
        }
    return {
        "runs": runs,
        "engines": engines,
        "machine": {
            "cpus": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "processor": platform.processor() or platform.machine(),
            "cpu_flags": list(cpu_features()),
        },
    }


BASELINE = "baseline"


@contextlib.contextmanager
def baseline_server(tree: Path, workdir: Path) -> Iterator[RunningServer]:
    """``bentoml serve service:CerebraScan`` of another source tree, with its default model.

    The tree is run from this environment: its folder is the working directory and first on
    ``PYTHONPATH``, so its packages shadow the installed (editable) ones. Its own registry code
    registers its bundled model into a data folder of its own.
    """
    data_dir = workdir / "state-baseline"
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "CEREBRASCAN_DATA_DIR": str(data_dir),
        "BENTOML_HOME": str(workdir / "bentoml-home-baseline"),
    }
    register = (
        "from cerebrascan.registry import ensure_default_model; "
        "from cerebrascan.settings import Settings; ensure_default_model(Settings())"
    )
    subprocess.run([sys.executable, "-c", register], cwd=tree, env=env, check=True)
    port = free_port()
    log_path = workdir / "serve-baseline.log"
    command = [str(Path(sys.executable).with_name("bentoml")), "serve", "service:CerebraScan"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(process, f"{url}/readyz", log_path, timeout_s=180)
            yield RunningServer(url=url, process=process, log_path=log_path)
        finally:
            stop_process(process)


def ratios_to_baseline(engines: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each engine's median latency over the baseline's (``BASELINE`` in ``engines``)."""
    reference = engines[BASELINE]["latency_s_median"]
    return {
        name: result["latency_s_median"] / reference
        for name, result in engines.items()
        if name != BASELINE
    }


ENGINES = ("onnxruntime", "openvino", "auto")
PRECISIONS = ("fp32", "bf16", "int8", "auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; default: start one")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=777, help="phantom seed")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="also serve this source tree (its default settings) and give ratios to it",
    )
    parser.add_argument(
        "--engines",
        nargs="+",
        default=["onnxruntime"],
        help="runner.engine of each server (one server per entry): onnxruntime, openvino or "
        "auto, optionally with :PRECISION (runner.precision, e.g. auto:auto, openvino:bf16)",
    )
    args = parser.parse_args()
    for entry in args.engines:
        engine, _, precision = entry.partition(":")
        if engine not in ENGINES or (precision and precision not in PRECISIONS):
            parser.error(f"--engines {entry!r}: engine one of {ENGINES}, precision {PRECISIONS}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="bench-analyze-"))
    (case,) = write_cohort(workdir / "cases", seed=args.seed, n_cases=1, prefix="BENCH")
    if args.url:
        results = measure({"url": (args.url, None)}, case, args.runs)
    else:
        with contextlib.ExitStack() as stack:
            servers: dict[str, tuple[str, int | None]] = {}
            for entry in args.engines:
                engine, _, precision = entry.partition(":")
                label = entry.replace(":", "-")
                data_dir = workdir / f"state-{label}"  # one store and registry per server
                ensure_default_model(Settings(data_dir=data_dir))
                environment = {
                    "CEREBRASCAN_DATA_DIR": str(data_dir),
                    "CEREBRASCAN_RUNNER__ENGINE": engine,
                }
                if precision:
                    environment["CEREBRASCAN_RUNNER__PRECISION"] = precision
                server = stack.enter_context(
                    bentoml_server(environment, workdir / f"serve-{label}.log")
                )
                servers[entry] = (server.url, server.process.pid)
            if args.baseline_tree:
                server = stack.enter_context(baseline_server(args.baseline_tree, workdir))
                servers[BASELINE] = (server.url, server.process.pid)
            results = measure(servers, case, args.runs)
            if args.baseline_tree:
                results["baseline_tree"] = str(args.baseline_tree)
                results["latency_vs_baseline"] = ratios_to_baseline(results["engines"])
    sys.stdout.write(json.dumps(results, indent=2) + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
