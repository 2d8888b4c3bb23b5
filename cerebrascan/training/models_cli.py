"""``cerebrascan models compare``: two registered versions side by side (no promotion)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def models() -> None:
    """Registered segmentation models: compare versions before promoting one."""


@models.command("compare")
@click.argument("first")
@click.argument("second")
@click.option(
    "--cases",
    "cases_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Held-out BraTS 2023 case folders with -seg files.",
)
@click.option(
    "--params",
    "params_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="params.yaml whose `evaluate` section sets inference (default: its defaults).",
)
@click.option("--resamples", type=click.IntRange(min=100), default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
def models_compare(
    first: str, second: str, cases_dir: Path, params_path: Path | None, resamples: int, seed: int
) -> None:
    """Score FIRST and SECOND (NAME@VERSION or NAME@ALIAS) on the same cases; log to MLflow."""
    from cerebrascan.settings import Settings
    from cerebrascan.training.compare import (
        CompareError,
        compare_models,
        comparison_table,
        parse_model_ref,
    )
    from cerebrascan.training.official_metrics import OfficialMetricsError
    from cerebrascan.training.params import PipelineParams, load_params

    params = load_params(params_path) if params_path else PipelineParams()
    try:
        comparison = compare_models(
            Settings(),
            parse_model_ref(first),
            parse_model_ref(second),
            cases_dir,
            params.evaluate,
            resamples=resamples,
            seed=seed,
        )
    except (CompareError, FileNotFoundError, OfficialMetricsError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(comparison_table(comparison))
    click.echo(f"MLflow run {comparison.run_id} (promotion unchanged)")
