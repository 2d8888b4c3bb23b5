"""``cerebrascan pipeline nnunet ...``: the stages of ``pipelines/nnunet/dvc.yaml``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from cerebrascan.settings import Settings
from cerebrascan.training.nnunet_params import NnunetPipelineParams, load_nnunet_params
from cerebrascan.training.params import PipelineParams

_ROOT = Path("data/nnunet")
_MODEL_DIR = Path("models/nnunet")


def _params(ctx: click.Context) -> tuple[PipelineParams, NnunetPipelineParams]:
    pipeline_params = ctx.obj
    assert isinstance(pipeline_params, PipelineParams)
    path = Path("params.yaml")
    parent = ctx.parent
    while parent is not None:  # `cerebrascan pipeline --params FILE nnunet ...`
        if "params_path" in parent.params:
            path = Path(parent.params["params_path"])
            break
        parent = parent.parent
    try:
        return pipeline_params, load_nnunet_params(path)
    except ValueError as exc:
        raise click.ClickException(f"{path}: {exc}") from exc


def _stage_errors() -> tuple[type[Exception], ...]:
    from cerebrascan.training.nnunet_import import NnunetImportError
    from cerebrascan.training.nnunet_pipeline import NnunetPipelineError

    return (NnunetPipelineError, NnunetImportError)


@contextmanager
def _stage_refusals(prefix: str = "") -> Iterator[None]:
    """A stage's own errors (bad params, a refused import) as a one-line CLI error."""
    try:
        yield
    except _stage_errors() as exc:
        raise click.ClickException(f"{prefix}{exc}") from exc


root_option = click.option(
    "--root", type=click.Path(path_type=Path), default=_ROOT, show_default=True,
    help="Folder holding nnUNet_raw, nnUNet_preprocessed, nnUNet_results and the logs.",
)  # fmt: skip
model_dir_option = click.option(
    "--model-dir", type=click.Path(path_type=Path), default=_MODEL_DIR, show_default=True
)


@click.group("nnunet")
@click.pass_context
def nnunet(ctx: click.Context) -> None:
    """nnU-Net stages: convert -> plan -> train -> import -> evaluate -> register."""
    ctx.obj = ctx.parent.obj if ctx.parent else None


@nnunet.command("convert")
@root_option
@click.pass_context
def convert(ctx: click.Context, root: Path) -> None:
    """The ``nnunet.cases`` folder in nnU-Net's raw format, region labels (WT/TC/ET)."""
    from cerebrascan.training.nnunet_pipeline import NnunetFolders, convert_dataset

    _, p = _params(ctx)
    with _stage_refusals():
        click.echo(str(convert_dataset(p.nnunet, NnunetFolders(root))))


@nnunet.command("plan")
@root_option
@click.pass_context
def plan(ctx: click.Context, root: Path) -> None:
    """``nnUNetv2_plan_and_preprocess`` (planner and configuration from params)."""
    from cerebrascan.training.nnunet_pipeline import NnunetFolders, plan_and_preprocess

    _, p = _params(ctx)
    with _stage_refusals():
        click.echo(str(plan_and_preprocess(p.nnunet, NnunetFolders(root))))


@nnunet.command("train")
@root_option
@click.pass_context
def train(ctx: click.Context, root: Path) -> None:
    """Train the folds (MLflow-tracked: nnU-Net's per-epoch losses and pseudo Dice)."""
    from cerebrascan.training.nnunet_pipeline import NnunetFolders, train_folds

    _, p = _params(ctx)
    with _stage_refusals():
        summary = train_folds(p.nnunet, NnunetFolders(root), Settings())
    click.echo(json.dumps(summary, indent=2))


@nnunet.command("import")
@root_option
@model_dir_option
@click.pass_context
def import_(ctx: click.Context, root: Path, model_dir: Path) -> None:
    """The trained folds as one ONNX model folder (checked against torch; not registered)."""
    from cerebrascan.training.nnunet_pipeline import NnunetFolders, import_model

    _, p = _params(ctx)
    with _stage_refusals("refused: "):
        click.echo(str(import_model(p.nnunet, NnunetFolders(root), model_dir)))


@nnunet.command("evaluate")
@root_option
@model_dir_option
@click.pass_context
def evaluate(ctx: click.Context, root: Path, model_dir: Path) -> None:
    """Held-out metrics (metrics.json) and the model card, as for the default model."""
    from cerebrascan.training.nnunet_pipeline import NnunetFolders, evaluate_imported

    pipeline_params, p = _params(ctx)
    metrics = evaluate_imported(pipeline_params, p.nnunet, model_dir, NnunetFolders(root))
    click.echo(json.dumps(metrics["mean"], indent=2))


@nnunet.command("register")
@root_option
@model_dir_option
@click.option(
    "--record", type=click.Path(path_type=Path), default=_ROOT / "registered.json",
    show_default=True,
)  # fmt: skip
@click.pass_context
def register(ctx: click.Context, root: Path, model_dir: Path, record: Path) -> None:
    """Register the model (the served one when ``segmentation.trainer`` is nnunet)."""
    from cerebrascan.training.nnunet_pipeline import NnunetFolders
    from cerebrascan.training.nnunet_pipeline import register as register_model

    _, p = _params(ctx)
    registered = register_model(p, model_dir, NnunetFolders(root), Settings())
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(registered, indent=2))
    click.echo(f"{registered['name']} version {registered['version']} ({registered['alias']})")
