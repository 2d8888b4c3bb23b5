"""Time the template report of a stored study: read findings and label map, draw the key image,
build the report and render JSON, Markdown, HTML and PDF.

    .venv/bin/python benchmarks/bench_report.py --runs 20 --out benchmarks/results/report_cpu2.json

Without ``--studies-dir`` a phantom case is generated and analysed in-process (the default model,
every installed analyzer) into a temporary folder first. ``--write-docs`` also saves the
rendered report and a PNG of its first PDF page under ``docs/images/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("bench_report")
REPO = Path(__file__).resolve().parent.parent


def analyse_phantom(data_dir: Path) -> tuple[Path, str]:
    """Generate and analyse one phantom case; return the studies folder and the study id."""
    os.environ["CEREBRASCAN_DATA_DIR"] = str(data_dir)
    from cerebrascan.inputs.case_folder import read_case
    from cerebrascan.phantoms.writer import write_cohort
    from cerebrascan.pipeline import AnalysisPipeline
    from cerebrascan.registry import ensure_default_model, resolve_model
    from cerebrascan.settings import Settings
    from schemas.analysis import AnalyzeOptions

    settings = Settings()
    ensure_default_model(settings)
    # The CLI also registers the bundled classifiers (classification, radiogenomics).
    subprocess.run(
        [str(Path(sys.executable).parent / "cerebrascan"), "registry", "ensure-default"],
        check=True,
        env=os.environ.copy(),
    )
    case = write_cohort(data_dir / "phantoms", seed=777, n_cases=1, prefix="BENCH")[0]
    # the default host: every analyzer configured from settings (classifiers from the registry)
    pipeline = AnalysisPipeline(settings, resolve_model(settings))
    # A patient id makes the study store keep a registration image: the key image's background.
    study = read_case(case)
    response = pipeline.run(study, AnalyzeOptions(patient_id="PAT-BENCH-0001")).response
    return settings.studies_dir, response.study_id


def main() -> None:
    """Run the benchmark and print (and optionally save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--studies-dir", type=Path)
    parser.add_argument("--study-id")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--work-dir", type=Path, help="keep the analysed phantom here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        if args.studies_dir and args.study_id:
            studies_dir, study_id = args.studies_dir, args.study_id
        else:
            studies_dir, study_id = analyse_phantom(args.work_dir or Path(tmp))
        from cerebrascan.report.settings import ReportSettings
        from cerebrascan.report.study_reports import StudyReports, render_bytes
        from cerebrascan.store.artefacts import StudyArtefacts

        reports = StudyReports(StudyArtefacts(studies_dir), ReportSettings())
        per_format: dict[str, list[float]] = {
            "build": [],
            "json": [],
            "md": [],
            "html": [],
            "pdf": [],
        }
        totals: list[float] = []
        reports.rendered(study_id, "pdf")  # warm-up: imports, fonts, templates
        for _ in range(args.runs):
            started = time.perf_counter()
            report, png = reports.build(study_id)
            per_format["build"].append(time.perf_counter() - started)
            for fmt in ("json", "md", "html", "pdf"):
                t0 = time.perf_counter()
                render_bytes(report, png, fmt)  # type: ignore[arg-type]
                per_format[fmt].append(time.perf_counter() - t0)
            totals.append(time.perf_counter() - started)
        summary = {
            "study_id": study_id,
            "runs": args.runs,
            "all_formats_s": {
                "median": statistics.median(totals),
                "min": min(totals),
                "max": max(totals),
            },
            "median_s": {name: statistics.median(values) for name, values in per_format.items()},
        }
        logger.info("%s", json.dumps(summary, indent=1))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(summary, indent=1) + "\n")
        if args.write_docs:
            write_docs(reports, study_id)


def write_docs(reports: object, study_id: str) -> None:
    """Save the rendered example report and a PNG of its first PDF page in docs/images/."""
    import pypdfium2 as pdfium

    from cerebrascan.report.study_reports import StudyReports, write_report_files

    assert isinstance(reports, StudyReports)
    report, png = reports.build(study_id)
    folder = REPO / "docs" / "images"
    written = write_report_files(report, png, folder / "example-report", stem="report")
    pdf = pdfium.PdfDocument((folder / "example-report" / "report.pdf").read_bytes())
    for index in range(len(pdf)):
        pdf[index].render(scale=1.4).to_pil().save(folder / f"report-page-{index + 1}.png")
    logger.info("wrote %s and %d page image(s)", [str(p) for p in written], len(pdf))


if __name__ == "__main__":
    main()
