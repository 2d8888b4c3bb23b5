"""Run a cohort on Ray Data: manifest -> fetch/preprocess tasks -> model actors (the network)
-> analysis actors (postprocess, analyzers, store) -> write tasks.

Ray is imported inside the functions that use it, so the rest of the package (and the
service, which only submits jobs) works without the ``cohort`` extra.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from cerebrascan.cohorts.ledger import (
    RESULTS_FILE,
    SUMMARY_FILE,
    is_done,
    read_ledger,
    write_progress,
    write_results,
)
from cerebrascan.cohorts.locations import MissingObjectError, OutputLocation, read_uri
from cerebrascan.cohorts.manifest import ManifestEntry, ManifestError, read_manifest
from cerebrascan.cohorts.progress import Progress
from cerebrascan.cohorts.results import COLUMNS, summarise
from cerebrascan.cohorts.settings import CohortSettings
from cerebrascan.cohorts.stages import (
    CaseSegmenter,
    CohortJob,
    StudyAnalyzer,
    StudyFinisher,
    fetch_and_prepare,
    write_study,
)
from cerebrascan.pipeline import build_analyzer_host
from cerebrascan.registry import (
    ModelNotAvailableError,
    client_for,
    ensure_experiment,
    resolve_model_version,
    version_by_alias,
)
from cerebrascan.settings import Settings
from plugins.analyzer import Need

logger = logging.getLogger(__name__)

MLFLOW_EXPERIMENT = "cerebrascan-cohorts"
FORWARDED_ENVIRONMENT = ("CEREBRASCAN_", "MLFLOW_", "AWS_")
"""Environment variables a local Ray's workers get from the driver (settings, S3 keys)."""


class CohortConfigError(ValueError):
    """The cohort settings cannot run on this Ray cluster."""


@dataclass(frozen=True)
class CohortRequest:
    """One ``cohort run``.

    Args:
        manifest_uri: CSV or Parquet, a path or ``s3://`` URI.
        out_uri: output folder or ``s3://`` prefix.
        model: ``name@alias`` (or ``name``: the settings' alias); None: the served model.
        store: also save every study in the study store.
        retry_failed: run studies whose ledger row is a failure again.
    """

    manifest_uri: str
    out_uri: str
    model: str | None = None
    store: bool = False
    retry_failed: bool = False


def resolve_cohort_model(settings: Settings, model: str | None) -> tuple[str, str]:
    """``name@alias`` -> (name, version), downloaded into the model cache once.

    Raises:
        ModelNotAvailableError: the registry has no such alias.
    """
    name, _, alias = (model or settings.model_name).partition("@")
    alias = alias or settings.model_alias
    found = version_by_alias(client_for(settings), name, alias)
    if found is None:
        raise ModelNotAvailableError(f"registry {settings.tracking_uri} has no {name}@{alias}")
    version = str(found.version)
    resolve_model_version(settings, name, version)  # fill the cache before the actors start
    return name, version


def run_cohort(
    settings: Settings,
    request: CohortRequest,
    *,
    progress_stream: TextIO | None = None,
    json_progress: bool = False,
    before_work: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Analyse every study of the manifest not done before; write the table and summary.

    The manifest is checked whole before any work. Ray must be initialised when there is
    work: by the caller, or by ``before_work`` (e.g. :func:`start_ray`), called only then.

    Returns:
        The summary (also in ``summary.json`` and an MLflow run), with ``processed``: the
        studies this run analysed.

    Raises:
        ManifestError: the manifest is malformed (the line is named).
        ModelNotAvailableError: no such model alias.
    """
    clock = time.perf_counter()
    try:
        manifest = read_uri(request.manifest_uri, settings.storage)
    except MissingObjectError as exc:
        raise ManifestError(f"cannot read the manifest: {exc}") from None
    entries = read_manifest(manifest, request.manifest_uri)
    name, version = resolve_cohort_model(settings, request.model)
    model_spec = resolve_model_version(settings, name, version).spec
    out = OutputLocation(request.out_uri, settings.storage)
    ledger = read_ledger(out)
    todo = [
        entry
        for entry in entries
        if not is_done(
            ledger.get(entry.study_key), name, version, retry_failed=request.retry_failed
        )
    ]
    logger.info(
        "cohort of %d studies with %s@%s: %d to run, %d done before",
        len(entries),
        name,
        version,
        len(todo),
        len(entries) - len(todo),
    )
    job = CohortJob(
        settings=settings,
        out_uri=request.out_uri,
        model_name=name,
        model_version=version,
        spec=model_spec,
        tta_disagreement=settings.runner.mirror_tta
        and Need.TTA_DISAGREEMENT in build_analyzer_host(settings).needs,
        store=request.store,
    )
    progress = Progress(
        total=len(todo),
        skipped=len(entries) - len(todo),
        stream=progress_stream or sys.stderr,
        json_lines=json_progress,
        publish=lambda snapshot: write_progress(out, snapshot),
    )
    if todo:
        if before_work is not None:
            before_work()
        _run_on_ray(job, todo, progress)
    progress.finish()
    ledger = read_ledger(out)
    rows = [ledger[e.study_key] for e in entries if e.study_key in ledger]
    missing = [e.study_key for e in entries if e.study_key not in ledger]
    if missing:  # a study lost by the engine itself (not its own failure): say so loudly
        logger.error("%d studies have no row after the run; rerun to complete them", len(missing))
    wall_s = time.perf_counter() - clock
    summary = summarise(rows)
    summary.update(
        processed=len(todo),
        wall_s=round(wall_s, 2),
        processed_per_minute=round(len(todo) / wall_s * 60, 2) if todo else None,
        missing=len(missing),
        model={"name": name, "version": version},
        results=out.child(RESULTS_FILE),
    )
    write_results(out, rows, summary)
    _log_to_mlflow(settings, request, summary)
    return summary


def _run_on_ray(job: CohortJob, todo: list[ManifestEntry], progress: Progress) -> None:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised; call start_ray() first")
    cohorts = job.settings.cohorts
    context = DataContext.get_current()
    context.max_errored_blocks = cohorts.max_errored_blocks
    # our own bar counts studies; Ray's per-operator bars and logs would interleave with it
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # one block per study: results are written study by study, so a killed run loses at
    # most the studies in flight (Ray would otherwise merge rows into large write tasks)
    dataset = ray.data.from_items([entry.as_row() for entry in todo], override_num_blocks=len(todo))
    cluster_cpus = float(ray.cluster_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
    _check_cluster_cpus(cohorts, cluster_cpus)
    # never more actors than studies: each one loads the model (or the analyzers)
    max_actors = min(cohorts.actors, len(todo))
    min_actors = min(cohorts.min_actors or max_actors, max_actors)
    prepared = dataset.map(
        functools.partial(fetch_and_prepare, job=job), num_cpus=cohorts.cpus_per_task
    )
    if not cohorts.splits:  # one pool: the network and the analysis in the same actors
        analysed = prepared.map_batches(
            StudyAnalyzer,
            fn_constructor_kwargs={"job": job},
            compute=ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
            num_cpus=cohorts.cpus_per_actor,
            batch_size=1,
            batch_format="pandas",
        )
    else:
        segmented = prepared.map_batches(
            CaseSegmenter,
            fn_constructor_kwargs={"job": job},
            compute=ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
            num_cpus=cohorts.cpus_per_actor,
            num_gpus=cohorts.gpus_per_actor or None,
            batch_size=1,
            batch_format="pandas",
        )
        analysis_actors = min(cohorts.analysis_actors, len(todo))
        analysed = segmented.map_batches(
            StudyFinisher,
            fn_constructor_kwargs={"job": job},
            compute=ActorPoolStrategy(size=analysis_actors),
            num_cpus=cohorts.cpus_per_analysis_actor,
            batch_size=1,
            batch_format="pandas",
        )
    written = analysed.map(functools.partial(write_study, job=job), num_cpus=cohorts.cpus_per_task)
    for row in written.iter_rows():
        progress.study_finished(str(row["status"]))


def _check_cluster_cpus(cohorts: CohortSettings, cluster_cpus: float) -> None:
    """Refuse a run whose actors cannot all start (Ray Data would wait for them forever).

    Raises:
        CohortConfigError: the actors and one task reserve more CPUs than the cluster has.
    """
    if cohorts.reserved_cpus > cluster_cpus:
        raise CohortConfigError(
            f"the cohort reserves {cohorts.reserved_cpus:g} Ray CPUs (actors={cohorts.actors} x "
            f"cpus_per_actor={cohorts.cpus_per_actor:g}, analysis_actors="
            f"{cohorts.analysis_actors} x cpus_per_analysis_actor="
            f"{cohorts.cpus_per_analysis_actor:g}, cpus_per_task={cohorts.cpus_per_task:g}) "
            f"but the cluster has {cluster_cpus:g}; lower them or add CPUs"
        )


def start_ray(settings: Settings, address: str | None = None) -> None:
    """Connect to Ray: ``local`` starts a private one, anything else is ``ray.init(address)``.

    A local Ray's workers get the driver's ``CEREBRASCAN_*``, ``MLFLOW_*`` and ``AWS_*``
    variables, so they build the same settings and reach the same S3.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or settings.cohorts.ray_address
    environment = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENVIRONMENT)}
    if address == "local":
        # logical CPUs: enough for every actor, even on a laptop with fewer cores
        cpus = settings.cohorts.local_cpus or max(
            os.cpu_count() or 1, math.ceil(settings.cohorts.reserved_cpus)
        )
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            object_store_memory=settings.cohorts.object_store_mb * 1_000_000,
            runtime_env={"env_vars": environment},
            log_to_driver=False,
        )
    else:
        ray.init(address=address, runtime_env={"env_vars": environment})


def _log_to_mlflow(settings: Settings, request: CohortRequest, summary: Mapping[str, Any]) -> None:
    """The summary as an MLflow run of experiment ``cerebrascan-cohorts`` (never fatal)."""
    try:
        client = client_for(settings)
        experiment = ensure_experiment(client, MLFLOW_EXPERIMENT, settings)
        run = client.create_run(experiment, run_name=f"cohort {request.out_uri[-60:]}")
        run_id = run.info.run_id
        client.log_param(run_id, "out", request.out_uri)
        client.log_param(
            run_id, "model", f"{summary['model']['name']}@{summary['model']['version']}"
        )
        client.log_metric(run_id, "studies", float(summary["studies"]))
        client.log_metric(run_id, "processed", float(summary["processed"]))
        for status, count in summary["counts"].items():
            client.log_metric(run_id, f"studies_{status}", float(count))
        for stage, figures in summary["stages"].items():
            for name, value in figures.items():
                client.log_metric(run_id, f"{stage}_{name}", float(value))
        client.log_dict(run_id, dict(summary), SUMMARY_FILE)
        client.set_terminated(run_id)
    except Exception:  # the table is written; a tracking outage must not fail the cohort
        logger.exception("could not log the cohort summary to MLflow")


__all__ = [
    "COLUMNS",
    "CohortConfigError",
    "CohortRequest",
    "resolve_cohort_model",
    "run_cohort",
    "start_ray",
]
