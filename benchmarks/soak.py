"""Soak test: concurrent clients against a real ``bentoml serve`` for minutes; errors and memory.

Starts ``bentoml serve service:CerebraScan`` on a free port with its own data folder (or uses
``--url``), warms it up, then keeps ``--clients`` (default 8) clients busy for ``--minutes``
(default 10). Each client loops: post a phantom study to ``POST /analyze``, read the study back
(``GET /studies/{id}``) and its label map (``GET /studies/{id}/segmentation``). A 429 (every
analysis slot taken, or BentoML's ``max_concurrency`` reached: it counts reads too) is
back-pressure, not an error: the client waits and retries it, and it is counted as
``rejected``; anything else that is not a 2xx, or a transport error, is an error. Every
``--sample-s`` seconds it sums the resident memory (RSS) of the server's processes (the ``bentoml
serve`` process and all its children: front and runner workers).

Prints one JSON object (errors, requests, studies, p50/p95 study latency, RSS start/end/growth
%) and exits non-zero when there was an error or RSS grew by ``--max-growth-pct`` (default 5)
or more. RSS end is the mean of the last three samples; RSS start the mean of the first three
taken after ``--settle-minutes`` of load (default: the first fifth of the run, while the heap
grows from one study at a time to several), so growth measures a leak, not the warm-up.

Usage::

    .venv/bin/python benchmarks/soak.py                       # 8 clients x 10 min
    .venv/bin/python benchmarks/soak.py --minutes 1 --out benchmarks/results/soak_1min.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cerebrascan.inputs.case_folder import modality_path  # noqa: E402
from cerebrascan.phantoms.writer import write_cohort  # noqa: E402

logger = logging.getLogger("soak")
MODALITIES = ("t1n", "t1c", "t2w", "t2f")
RETRY_AFTER_429_S = 0.5


@dataclass
class Tally:
    """What the clients saw, guarded by one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    studies: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    study_latencies_s: list[float] = field(default_factory=list)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)


def server_rss_bytes(pid: int) -> tuple[int, int]:
    """Summed RSS of process ``pid`` and all its descendants, and how many processes."""
    root = psutil.Process(pid)
    total = count = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += process.memory_info().rss
            count += 1
    return total, count


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile ``q`` in [0, 100] (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def one_round(
    session: httpx.Client,
    url: str,
    files: dict[str, Any],
    tally: Tally,
    stop: threading.Event | None = None,
) -> None:
    """Post one study (retrying 429s until ``stop``), then read it and its label map back."""
    start = time.perf_counter()
    while True:
        response = session.post(f"{url}/analyze", files=files)
        with tally.lock:
            tally.requests += 1
        if response.status_code != 429:
            break
        with tally.lock:
            tally.rejected += 1
        if stop is not None and stop.wait(RETRY_AFTER_429_S):
            return  # the soak is over: no new study starts
    if response.status_code != 200:
        tally.error(f"POST /analyze {response.status_code}: {response.text[:200]}")
        return
    elapsed = time.perf_counter() - start
    study_id = response.json()["study_id"]
    with tally.lock:
        tally.studies += 1
        tally.study_latencies_s.append(elapsed)
    for path in (f"/studies/{study_id}", f"/studies/{study_id}/segmentation"):
        while True:
            # BentoML's max_concurrency counts every route: reads wait behind analyses too
            read = session.get(f"{url}{path}")
            with tally.lock:
                tally.requests += 1
            if read.status_code != 429:
                break
            with tally.lock:
                tally.rejected += 1
            time.sleep(RETRY_AFTER_429_S)
        if read.status_code != 200:
            tally.error(f"GET {path.replace(study_id, '{id}')} {read.status_code}")


def client_loop(
    url: str, payloads: list[dict[str, Any]], index: int, stop: threading.Event, tally: Tally
) -> None:
    """One client: rounds back to back until ``stop`` is set."""
    with httpx.Client(timeout=900) as session:
        round_number = 0
        while not stop.is_set():
            try:
                one_round(
                    session, url, payloads[(index + round_number) % len(payloads)], tally, stop
                )
            except httpx.HTTPError as exc:
                tally.error(f"transport: {type(exc).__name__}: {exc}")
            round_number += 1


@contextlib.contextmanager
def started_server(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, int]]:
    """A ``bentoml serve`` on a free port with its own data folder: (URL, pid)."""
    from cerebrascan.registry import ensure_default_model
    from cerebrascan.settings import Settings
    from cerebrascan.testing.server_process import bentoml_server

    data_dir = Path(tempfile.mkdtemp(prefix="cerebrascan-soak-"))
    server_env = {
        "CEREBRASCAN_DATA_DIR": str(data_dir),
        "CEREBRASCAN_GRPC__PORT": "0",
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
        yield server.url, server.process.pid


def soak(
    url: str,
    pid: int,
    payloads: list[dict[str, Any]],
    *,
    clients: int,
    seconds: float,
    sample_s: float,
    settle_s: float,
) -> dict[str, Any]:
    """Run the clients for ``seconds``, sampling the server's RSS every ``sample_s``; the
    summary. RSS growth is measured from the first samples after ``settle_s``."""
    tally = Tally()
    stop = threading.Event()
    samples: list[tuple[float, int, int]] = []
    threads = [
        threading.Thread(target=client_loop, args=(url, payloads, i, stop, tally), daemon=True)
        for i in range(clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while time.monotonic() - started < seconds:
        rss, processes = server_rss_bytes(pid)
        samples.append((time.monotonic() - started, rss, processes))
        stop.wait(min(sample_s, max(0.0, seconds - (time.monotonic() - started))))
    stop.set()
    for thread in threads:  # each finishes the round it is in
        thread.join(timeout=900)
    rss, processes = server_rss_bytes(pid)
    samples.append((time.monotonic() - started, rss, processes))
    # the start is taken once the clients have run a while (the first concurrent studies grow
    # the heap from the warm-up's one at a time); growth from the very first sample is reported
    settled = [sample for sample in samples if sample[0] >= settle_s] or samples[-1:]
    first = statistics.mean(s[1] for s in samples[:3])
    head = statistics.mean(s[1] for s in settled[:3])
    tail = statistics.mean(s[1] for s in samples[-3:])
    latencies = tally.study_latencies_s
    return {
        "clients": clients,
        "seconds": round(time.monotonic() - started, 1),
        "requests": tally.requests,
        "studies": tally.studies,
        "rejected_429": tally.rejected,
        "errors": len(tally.errors),
        "error_examples": tally.errors[:10],
        "study_latency_p50_s": _round(percentile(latencies, 50)),
        "study_latency_p95_s": _round(percentile(latencies, 95)),
        "rss_first_mb": round(first / 2**20, 1),
        "rss_settle_s": settle_s,
        "rss_start_mb": round(head / 2**20, 1),
        "rss_end_mb": round(tail / 2**20, 1),
        "rss_growth_pct": round((tail - head) / head * 100, 2),
        "rss_growth_from_first_pct": round((tail - first) / first * 100, 2),
        "rss_max_mb": round(max(s[1] for s in samples) / 2**20, 1),
        "server_processes": sorted({s[2] for s in samples}),
        "rss_samples": len(samples),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (then --pid is required)")
    parser.add_argument("--pid", type=int, help="the running server's bentoml serve pid")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--warmup", type=int, default=2, help="sequential rounds before timing")
    parser.add_argument("--phantoms", type=int, default=4, help="distinct phantom cases")
    parser.add_argument("--max-growth-pct", type=float, default=5.0)
    parser.add_argument(
        "--settle-minutes",
        type=float,
        default=None,
        help="minutes of load before the RSS start is taken (default: a fifth of --minutes)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if args.url and args.pid is None:
        parser.error("--url needs --pid (the server whose memory is sampled)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    work = Path(tempfile.mkdtemp(prefix="cerebrascan-soak-cases-"))
    cases = write_cohort(work / "cases", seed=20260, n_cases=args.phantoms, prefix="SOAK")
    payloads = [
        {
            m: (f"{m}.nii.gz", modality_path(case, m).read_bytes(), "application/gzip")
            for m in MODALITIES
        }
        for case in cases
    ]
    env = dict(item.split("=", 1) for item in args.env)
    with contextlib.ExitStack() as stack:
        if args.url:
            url, pid = args.url, args.pid
        else:
            url, pid = stack.enter_context(started_server(env, work / "bentoml.log"))
        warm = Tally()
        with httpx.Client(timeout=900) as session:
            for index in range(args.warmup):
                one_round(session, url, payloads[index % len(payloads)], warm)
        if warm.errors:
            raise SystemExit(f"warm-up failed: {warm.errors}")
        logger.info("warm; %d clients for %.1f min", args.clients, args.minutes)
        summary = soak(
            url,
            pid,
            payloads,
            clients=args.clients,
            seconds=args.minutes * 60,
            sample_s=args.sample_s,
            settle_s=60
            * (args.minutes / 5 if args.settle_minutes is None else args.settle_minutes),
        )
    summary["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
    }
    summary["passed"] = summary["errors"] == 0 and summary["rss_growth_pct"] < args.max_growth_pct
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    sys.exit(0 if summary["passed"] else 1)


if __name__ == "__main__":
    main()
