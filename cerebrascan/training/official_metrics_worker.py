"""Run the official BraTS evaluation (``brats-evaluation``, panoptica) on label-map pairs.

This file runs in the isolated ``.venv-brats`` (``make brats-metrics``), never in the project's
environment: it imports nothing of ``cerebrascan``. Usage::

    .venv-brats/bin/python official_metrics_worker.py MANIFEST.json RESULT.json

``MANIFEST.json`` is ``{"config": "gli", "cases": [{"case": id, "prediction": path,
"reference": path}, ...]}``; ``RESULT.json`` gets ``{"cases": [{"case": id, "regions": {group:
{metric: value}}}]}`` with every number panoptica reports per group (``inf``/``nan`` as strings,
JSON has neither).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

#: groups of the glioma config that are not reported (NETC, SNFH alone; RC is no 2023 label)
SKIPPED_GROUPS = ("netc", "snfh", "rc")


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def main(manifest_path: str, result_path: str) -> int:
    """Evaluate each case of the manifest; write the result file; 0 when every case evaluated."""
    from brats_evaluation import config_path  # type: ignore[import-not-found]
    from panoptica import Panoptica_Evaluator  # type: ignore[import-not-found]

    manifest = json.loads(Path(manifest_path).read_text())
    evaluator = Panoptica_Evaluator.load_from_config(str(config_path(manifest["config"])))
    cases = []
    failed = 0
    for item in manifest["cases"]:
        # as the package's evaluate_single_exam, less the label groups nobody reads here
        # (each group is evaluated on its own: the others' figures are unchanged)
        try:
            results = evaluator.evaluate(
                item["prediction"], item["reference"], skip_groups=list(SKIPPED_GROUPS)
            )
        except Exception as exc:  # noqa: BLE001 - reported per case, as the package does
            failed += 1
            cases.append({"case": item["case"], "error": f"{type(exc).__name__}: {exc}"})
            continue
        raw = {group: result.to_dict(True) for group, result in results.items()}
        regions = {
            group: {
                key: _json_number(value)
                for key, value in metrics.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)
            }
            for group, metrics in raw.items()
            if isinstance(metrics, dict)
        }
        cases.append({"case": item["case"], "regions": regions})
    Path(result_path).write_text(json.dumps({"cases": cases}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
