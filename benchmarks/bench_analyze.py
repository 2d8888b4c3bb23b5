"""End-to-end ``POST /analyze`` latency and server memory on a phantom case.

Starts a real ``bentoml serve`` (unless ``--url`` names a running one), posts the same
240x240x155 phantom case ``--runs`` times after one warm-up, and prints the median and spread
of the latency, the server-side stage timings and the peak RSS of the server's process tree.

    .venv/bin/python benchmarks/bench_analyze.py --runs 5 [--out benchmarks/results/analyze.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from cerebrascan.inputs.case_folder import modality_path
from cerebrascan.phantoms.writer import write_cohort
from cerebrascan.registry import ensure_default_model
from cerebrascan.settings import Settings
from cerebrascan.testing.server_process import bentoml_server

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


def post_case(url: str, case: Path) -> tuple[float, dict]:
    files = {
        m: (f"{m}.nii.gz", modality_path(case, m).read_bytes(), "application/gzip")
        for m in ("t1n", "t1c", "t2w", "t2f")
    }
    clock = time.perf_counter()
    response = httpx.post(f"{url}/analyze", files=files, timeout=600)
    elapsed = time.perf_counter() - clock
    response.raise_for_status()
    return elapsed, response.json()


def measure(url: str, case: Path, runs: int, pid: int | None) -> dict:
    post_case(url, case)  # warm-up: first-call allocations, ORT arena
    latencies, stage_timings = [], []
    monitor = PeakRss(pid) if pid else None
    if monitor:
        monitor.__enter__()
    try:
        for _ in range(runs):
            elapsed, result = post_case(url, case)
            latencies.append(elapsed)
            stage_timings.append(result["timings_ms"])
    finally:
        if monitor:
            monitor.__exit__()
    stages = {k: statistics.median(t[k] for t in stage_timings) for k in stage_timings[0]}
    return {
        "runs": runs,
        "latency_s_median": statistics.median(latencies),
        "latency_s_min": min(latencies),
        "latency_s_max": max(latencies),
        "stage_ms_median": stages,
        "server_peak_rss_mb": (monitor.peak / 2**20) if monitor else None,
        "machine": {
            "cpus": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "processor": platform.processor() or platform.machine(),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server; default: start one")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=777, help="phantom seed")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="bench-analyze-"))
    (case,) = write_cohort(workdir / "cases", seed=args.seed, n_cases=1, prefix="BENCH")
    if args.url:
        results = measure(args.url, case, args.runs, None)
    else:
        data_dir = workdir / "state"
        ensure_default_model(Settings(data_dir=data_dir))
        with bentoml_server(
            {"CEREBRASCAN_DATA_DIR": str(data_dir)}, workdir / "serve.log"
        ) as server:
            results = measure(server.url, case, args.runs, server.process.pid)
    sys.stdout.write(json.dumps(results, indent=2) + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
