"""``cerebrascan cohort run``: a manifest of studies to one results table, on Ray."""

from __future__ import annotations

import json
import logging
import sys

import click

from cerebrascan.errors import InputError
from cerebrascan.settings import Settings

logger = logging.getLogger(__name__)


@click.group()
def cohort() -> None:
    """Cohorts: analyse thousands of studies on Ray (see docs/cohorts.md)."""


@cohort.command("run")
@click.option("--manifest", required=True, help="CSV or Parquet: a path or s3:// URI.")
@click.option("--out", "out_uri", required=True, help="Output folder or s3://bucket/prefix.")
@click.option(
    "--ray-address",
    default=None,
    help="'local' (a private Ray), 'auto' (this machine's cluster) or ray://host:10001; "
    "default: cohorts.ray_address.",
)
@click.option("--actors", type=click.IntRange(min=1), default=None, help="Model actors (max).")
@click.option(
    "--analysis-actors",
    type=click.IntRange(min=1),
    default=None,
    help="Analysis actors (postprocess, analyzers, store; CPU).",
)
@click.option(
    "--gpus-per-actor", type=click.FloatRange(min=0), default=None, help="GPUs per model actor."
)
@click.option("--model", default=None, help="name@alias; default: the served model and alias.")
@click.option("--json-progress", is_flag=True, help="One JSON line per study on stdout.")
@click.option("--store", is_flag=True, help="Also save every study in the study store.")
@click.option("--retry-failed", is_flag=True, help="Run failed and input_error studies again.")
def cohort_run(
    manifest: str,
    out_uri: str,
    ray_address: str | None,
    actors: int | None,
    analysis_actors: int | None,
    gpus_per_actor: float | None,
    model: str | None,
    json_progress: bool,
    store: bool,
    retry_failed: bool,
) -> None:
    """Analyse every study of MANIFEST not done before; write results.parquet under OUT.

    A malformed manifest or duplicate study key stops before any work, naming the line.
    Rerunning does only what is missing; a new model version redoes everything.
    """
    from cerebrascan.cohorts.run import CohortConfigError, CohortRequest, run_cohort, start_ray
    from cerebrascan.registry import ModelNotAvailableError

    settings = Settings()
    updates: dict[str, object] = {}
    if actors is not None:
        updates["actors"] = actors
    if analysis_actors is not None:
        updates["analysis_actors"] = analysis_actors
    if gpus_per_actor is not None:
        updates["gpus_per_actor"] = gpus_per_actor
    if ray_address is not None:
        updates["ray_address"] = ray_address
    if updates:
        cohorts = settings.cohorts.model_validate({**settings.cohorts.model_dump(), **updates})
        settings = settings.model_copy(update={"cohorts": cohorts})
    request = CohortRequest(
        manifest_uri=manifest,
        out_uri=out_uri,
        model=model,
        store=store,
        retry_failed=retry_failed,
    )
    try:
        summary = run_cohort(
            settings,
            request,
            progress_stream=sys.stdout if json_progress else sys.stderr,
            json_progress=json_progress,
            before_work=lambda: start_ray(settings),
        )
    except (InputError, ModelNotAvailableError, CohortConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    counts = summary["counts"]
    message = (
        f"{summary['studies']} studies ({summary['processed']} analysed now): "
        f"{counts['ok']} ok, {counts['input_error']} input_error, {counts['failed']} failed; "
        f"table: {summary['results']}"
    )
    if json_progress:
        click.echo(json.dumps({"summary": summary}))
    else:
        click.echo(message)
