"""Load test of ``POST /analyze``: cases/minute and latency at several client concurrencies.

Against a running server (``--url``), or one this script starts (``bentoml serve
service:CerebraScan`` on a free port, with ``--env KEY=VALUE`` settings). For each concurrency
(default 1, 2, 4, 8) it keeps that many clients posting phantom cases back to back until
``--cases-per-level`` (default: 2 x concurrency, at least 4) have finished, then reports
cases/minute, p50/p95 latency, and the mean runner batch size over that level read from
``/metrics`` (``bentoml_service_adaptive_batch_size``). When it started the server itself it
also reads the runner round-trip lines from the server log: the transfer overhead of the
runner-service boundary for cases that ran alone in their batch.

Usage::

    .venv/bin/python benchmarks/load_test.py --out benchmarks/results/load_cpu2.json
    .venv/bin/python benchmarks/load_test.py --env CEREBRASCAN_BATCHING__REMOTE_RUNNER=false
    .venv/bin/python benchmarks/load_test.py --url http://127.0.0.1:3000 --levels 1 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cerebrascan.inputs.case_folder import modality_path  # noqa: E402
from cerebrascan.phantoms.writer import write_cohort  # noqa: E402

logger = logging.getLogger("load_test")
MODALITIES = ("t1n", "t1c", "t2w", "t2f")
BATCH_METRIC = re.compile(
    r'^bentoml_service_adaptive_batch_size_(sum|count)\{[^}]*method_name="segment"[^}]*\} '
    r"([0-9.eE+-]+)$"
)
ROUND_TRIP = re.compile(
    r"runner round trip (\d+) ms, runner work (\d+) ms, overhead (-?\d+) ms, "
    r"sent ([0-9.]+) MB, received ([0-9.]+) MB, batch of (\d+)"
)


def batch_counters(url: str) -> tuple[float, float]:
    """Sum and count of the runner's adaptive batch size histogram (0, 0 if absent)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    total = count = 0.0
    for line in text.splitlines():
        match = BATCH_METRIC.match(line)
        if match:
            if match.group(1) == "sum":
                total += float(match.group(2))
            else:
                count += float(match.group(2))
    return total, count


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100]."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_level(url: str, payloads: list[dict], concurrency: int, n_cases: int) -> dict:
    """``n_cases`` posts with ``concurrency`` clients; latencies and throughput."""
    counter = iter(range(n_cases))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    rejected = [0]

    def client() -> None:
        with httpx.Client(timeout=900) as session:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                files = payloads[index % len(payloads)]
                start = time.perf_counter()
                response = session.post(f"{url}/analyze", files=files)
                # 429: the front's max_concurrency is reached (a client's next request can
                # arrive before its last one is counted out); back off and retry, as a
                # well-behaved client does; latency counts from the first attempt
                while response.status_code == 429:
                    with lock:
                        rejected[0] += 1
                    time.sleep(0.5)
                    response = session.post(f"{url}/analyze", files=files)
                elapsed = time.perf_counter() - start
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        failures.append(f"{response.status_code}: {response.text[:200]}")

    before = batch_counters(url)
    cpu_before = psutil.cpu_times()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(client)
    wall = time.perf_counter() - start
    cpu_after = psutil.cpu_times()
    after = batch_counters(url)
    # machine-wide busy CPU time (server, runner service and this client): at 1 client it
    # bounds what concurrency can buy on this machine (cores / busy cores)
    idle = (cpu_after.idle + cpu_after.iowait) - (cpu_before.idle + cpu_before.iowait)
    total = sum(cpu_after) - sum(cpu_before)
    calls = after[1] - before[1]
    return {
        "concurrency": concurrency,
        "cases": len(latencies),
        "failures": failures,
        "wall_s": round(wall, 2),
        "cases_per_minute": round(len(latencies) / wall * 60, 2) if latencies else 0.0,
        "p50_s": round(percentile(latencies, 50), 2) if latencies else None,
        "p95_s": round(percentile(latencies, 95), 2) if latencies else None,
        "rejected_429_retried": rejected[0],
        "runner_calls": int(calls),
        "mean_batch_size": round((after[0] - before[0]) / calls, 2) if calls else None,
        "busy_cores": round((total - idle) / total * (os.cpu_count() or 1), 2) if total else None,
    }


def transfer_overhead(log_path: Path) -> dict | None:
    """Runner-boundary overhead of cases that were alone in their runner call (from the log)."""
    alone = []
    sizes = None
    for line in log_path.read_text(errors="replace").splitlines():
        match = ROUND_TRIP.search(line)
        if match and int(match.group(6)) == 1:
            alone.append(float(match.group(3)))
            sizes = (float(match.group(4)), float(match.group(5)))
    if not alone:
        return None
    return {
        "cases_alone": len(alone),
        "median_overhead_ms": round(statistics.median(alone), 1),
        "min_overhead_ms": round(min(alone), 1),
        "sent_mb": sizes[0] if sizes else None,
        "received_mb": sizes[1] if sizes else None,
    }


@contextlib.contextmanager
def started_server(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """A ``bentoml serve`` on a free port with its own data folder and the default model."""
    from cerebrascan.registry import ensure_default_model
    from cerebrascan.settings import Settings
    from cerebrascan.testing.server_process import bentoml_server

    data_dir = Path(tempfile.mkdtemp(prefix="cerebrascan-load-"))
    # a BentoML home of its own: every `bentoml serve` empties its home's Prometheus folder,
    # which would wipe this server's /metrics if another server started meanwhile
    server_env = {
        "CEREBRASCAN_DATA_DIR": str(data_dir),
        "CEREBRASCAN_GRPC__PORT": "0",
        "BENTOML_HOME": str(data_dir / "bentoml-home"),
        **env,
    }
    saved = dict(os.environ)
    os.environ.update(server_env)
    try:
        ensure_default_model(Settings())
    finally:
        os.environ.clear()
        os.environ.update(saved)
    with bentoml_server(server_env, log_path, ready_timeout_s=600) as server:
        yield server.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server; default: start one")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--cases-per-level", type=int, default=None)
    parser.add_argument("--phantoms", type=int, default=4, help="distinct phantom cases")
    parser.add_argument("--warmup", type=int, default=2, help="sequential posts before timing")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    workdir = Path(tempfile.mkdtemp(prefix="cerebrascan-load-cases-"))
    cases = write_cohort(workdir, seed=777, n_cases=args.phantoms, prefix="LOAD")
    payloads = [
        {
            m: (f"{m}.nii.gz", modality_path(case, m).read_bytes(), "application/gzip")
            for m in MODALITIES
        }
        for case in cases
    ]
    env = dict(item.split("=", 1) for item in args.env)
    log_path = workdir / "server.log"
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(started_server(env, log_path))
        logger.info("server %s; warming up with %d posts", url, args.warmup)
        for index in range(args.warmup):
            response = httpx.post(
                f"{url}/analyze", files=payloads[index % len(payloads)], timeout=900
            )
            response.raise_for_status()
        results = []
        for level in args.levels:
            n_cases = args.cases_per_level or max(4, 2 * level)
            result = run_level(url, payloads, level, n_cases)
            logger.info("%s", json.dumps(result))
            results.append(result)
    sequential = next((r for r in results if r["concurrency"] == 1), None)
    if sequential and sequential["busy_cores"]:
        ceiling = round((os.cpu_count() or 1) / sequential["busy_cores"], 2)
        logger.info(
            "1 client keeps %.2f cores busy: ceiling x%.2f", sequential["busy_cores"], ceiling
        )
    for result in results:
        if sequential and sequential["cases_per_minute"]:
            result["speedup_vs_sequential"] = round(
                result["cases_per_minute"] / sequential["cases_per_minute"], 2
            )
    report = {
        "url": args.url or "started by load_test.py",
        "server_env": env,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_at_end": os.getloadavg(),
        "levels": results,
        "ceiling_vs_sequential": (
            round((os.cpu_count() or 1) / sequential["busy_cores"], 2)
            if sequential and sequential["busy_cores"]
            else None
        ),
        "runner_transfer": None if args.url else transfer_overhead(log_path),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
