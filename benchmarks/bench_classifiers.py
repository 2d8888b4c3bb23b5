"""Per-case time of the classifier analyzers (radiomics + ``classification`` + ``radiogenomics``).

Renders one phantom per tumour type (240x240x155, 1 mm), registers the bundled classifiers in a
temporary MLflow registry, warms the process up on one case (atlas files, models, pyradiomics),
then runs both analyzers through :class:`plugins.host.AnalyzerHost` on every case and reports
the median and maximum wall time per case, with the feature time on its own. The atlas mapping
is by voxel index (the phantoms lie on the SRI24 grid); a study that needs an atlas registration
pays it once, shared with ``nogo`` / ``hotspot`` (see the analyzer table in README.md).

    .venv/bin/python benchmarks/bench_classifiers.py \
        [--out benchmarks/results/classifiers_cpu2.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cerebrascan.classifiers import serving
from cerebrascan.classifiers.model_registry import ensure_bundled_classifiers
from cerebrascan.phantoms import PhantomParams, generate_case
from cerebrascan.phantoms.contrasts import MODALITIES
from cerebrascan.phantoms.tumour_types import TUMOUR_TYPES
from cerebrascan.pipeline import build_analyzer_host
from cerebrascan.settings import Settings
from plugins.settings import PluginSettings
from plugins.testing import MemoryArtefactSink, study_inputs

logger = logging.getLogger("bench_classifiers")
PLUGINS = ("plugins.builtin.classification", "plugins.builtin.radiogenomics")


def main() -> None:
    """Run the benchmark and print (and optionally save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=900)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as data_dir:
        os.environ["CEREBRASCAN_DATA_DIR"] = data_dir
        ensure_bundled_classifiers(Settings())
        host = build_analyzer_host(
            Settings(plugins=PluginSettings(entry_points=False)), builtin_plugins=PLUGINS
        )
        cases = [
            generate_case(args.seed + k, f"BENCH-{t}", PhantomParams(tumour_type=t))
            for k, t in enumerate(TUMOUR_TYPES)
        ]
        options = {"registration": "never", "patient_age_years": 50.0}
        rows = []
        for k, case in enumerate([cases[0], *cases]):
            serving.clear_cache()
            inputs = study_inputs(
                case.segmentation,
                affine=case.affine,
                images=np.stack([case.images[m] for m in MODALITIES]).astype(np.float32),
                study_id=f"{k:032d}",
            )
            started = time.perf_counter()
            outcomes = host.run(
                inputs,
                artefacts=MemoryArtefactSink(),
                options={"classification": options, "radiogenomics": options},
            )
            total = time.perf_counter() - started
            result = outcomes["classification"].result or {}
            rows.append(
                {
                    "case": case.case_id,
                    "warm_up": k == 0,
                    "total_s": round(total, 3),
                    "features_s": round((result.get("features_ms") or 0.0) / 1000.0, 3),
                    "classification_ms": outcomes["classification"].duration_ms,
                    "radiogenomics_ms": outcomes["radiogenomics"].duration_ms,
                    "wt_ml": round(case.truth["volumes_ml"]["WT"], 1),
                    "statuses": [outcomes[n].status for n in ("classification", "radiogenomics")],
                }
            )
    measured = [r for r in rows if not r["warm_up"]]
    summary = {
        "machine": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "cases": len(measured),
        "median_total_s": statistics.median(r["total_s"] for r in measured),
        "max_total_s": max(r["total_s"] for r in measured),
        "median_features_s": statistics.median(r["features_s"] for r in measured),
        "rows": rows,
    }
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
