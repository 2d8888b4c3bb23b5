"""Fault figure: the runner service killed mid-request (two-service design, issue #18 item 8).

Starts ``bentoml serve service:CerebraScan`` with the runner in its own service (the default
``batching.remote_runner``) and its own data folder, posts one warm-up study, then posts a
phantom study and ``kill -9``s the runner service's process ``--kill-after-s`` seconds later,
while the study is being segmented. BentoML restarts the runner process. Prints JSON: the
in-flight request's status and body (a 503 with a message, or a 200 when the front's one retry
reached the restarted runner: never a 500), the seconds from the kill until ``/readyz`` answers
200 again (the runner answers its reference tile), and the status and duration of the next study
posted then. Exits 1 when the in-flight answer is another status, the next study fails, or
``/readyz`` took more than ``--max-recovery-s`` (default 10).

Usage::

    .venv/bin/python benchmarks/fault_runner_kill.py --out benchmarks/results/runner_kill.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from soak import started_server  # noqa: E402

from cerebrascan.inputs.case_folder import modality_path  # noqa: E402
from cerebrascan.phantoms.writer import write_cohort  # noqa: E402

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
RUNNER_SERVICE = "--service-name cerebrascan-runner"


def runner_process(server_pid: int) -> psutil.Process | None:
    """The runner service's worker process under the ``bentoml serve`` process."""
    for process in psutil.Process(server_pid).children(recursive=True):
        if RUNNER_SERVICE in " ".join(process.cmdline()):
            return process
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kill-after-s", type=float, default=3.0)
    parser.add_argument("--max-recovery-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cerebrascan-runner-kill-"))
    (case,) = write_cohort(work / "cases", seed=31, n_cases=1, prefix="KILL")
    files = {
        m: (f"{m}.nii.gz", modality_path(case, m).read_bytes(), "application/gzip")
        for m in MODALITIES
    }
    env = {"CEREBRASCAN_BATCHING__REMOTE_RUNNER": "true"}
    with started_server(env, work / "bentoml.log") as (url, pid), httpx.Client(timeout=900) as http:
        warm = http.post(f"{url}/analyze", files=files)
        assert warm.status_code == 200, warm.text
        answer: dict[str, Any] = {}
        in_flight = threading.Thread(
            target=lambda: answer.update(r=http.post(f"{url}/analyze", files=files))
        )
        in_flight.start()
        time.sleep(args.kill_after_s)
        runner = runner_process(pid)
        assert runner is not None, "no runner service process"
        killed_at = time.monotonic()
        os.kill(runner.pid, signal.SIGKILL)
        in_flight.join()
        response: httpx.Response = answer["r"]
        while http.get(f"{url}/readyz").status_code != 200:
            time.sleep(0.2)
        ready_s = time.monotonic() - killed_at
        posted_at = time.monotonic()
        following = http.post(f"{url}/analyze", files=files)
        next_s = time.monotonic() - posted_at
    summary = {
        "kill_after_s": args.kill_after_s,
        "in_flight_status": response.status_code,
        "in_flight_error": None if response.status_code == 200 else response.text[:300],
        "ready_after_kill_s": round(ready_s, 1),
        "next_status": following.status_code,
        "next_study_s": round(next_s, 1),
        "cores": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
    }
    summary["passed"] = (
        response.status_code in (200, 503)
        and following.status_code == 200
        and ready_s <= args.max_recovery_s
    )
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    sys.exit(0 if summary["passed"] else 1)


if __name__ == "__main__":
    main()
