"""The ``cerebrascan`` command line: phantoms, the model pipeline stages, the registry."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from cerebrascan.settings import Settings

logger = logging.getLogger("cerebrascan")

DEFAULT_PARAMS = Path("params.yaml")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """CerebraScan: brain-tumour MRI segmentation and analysis (research use only)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--seed", type=int, required=True, help="Cohort seed; same seed, same cases.")
@click.option("--n", "n_cases", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--prefix", default="PHANTOM", show_default=True, help="Case id prefix.")
def phantom(out_dir: Path, seed: int, n_cases: int, prefix: str) -> None:
    """Write synthetic BraTS-style cases (four modalities, segmentation, truth.json)."""
    from cerebrascan.phantoms.writer import write_cohort

    folders = write_cohort(out_dir, seed=seed, n_cases=n_cases, prefix=prefix)
    for folder in folders:
        click.echo(str(folder))


@main.command("phantom-series")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--seed", type=click.IntRange(min=0), required=True, help="Series seed.")
@click.option(
    "--days", default="0,60,120", show_default=True, help="Visit days since the first visit."
)
@click.option(
    "--factors",
    default="1,0.25,0.6",
    show_default=True,
    help="Tumour volume of each visit relative to the first (0: gone).",
)
@click.option("--satellite-from", type=int, default=None, help="First visit with a new lesion.")
@click.option("--first-date", default="2025-01-06", show_default=True, help="ISO date.")
@click.option("--downsample", type=click.Choice(["1", "2"]), default="1", show_default=True)
@click.option("--id", "series_id", default="SERIES", show_default=True, help="Case id prefix.")
def phantom_series(
    out_dir: Path,
    seed: int,
    days: str,
    factors: str,
    satellite_from: int | None,
    first_date: str,
    downsample: str,
    series_id: str,
) -> None:
    """Write the visits of one synthetic patient (growth, shrinkage, new lesion, head poses)."""
    from datetime import date

    from cerebrascan.phantoms.series import SeriesPlan, generate_series
    from cerebrascan.phantoms.series_writer import write_series

    try:
        plan = SeriesPlan(
            seed=seed,
            visit_days=tuple(int(v) for v in days.split(",")),
            volume_factors=tuple(float(v) for v in factors.split(",")),
            satellite_from_visit=satellite_from,
            first_date=date.fromisoformat(first_date),
            downsample=int(downsample),
        )
        visits = generate_series(plan, series_id=series_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    click.echo(str(write_series(visits, plan, out_dir)))


@main.group()
def registry() -> None:
    """The MLflow model registry."""


@registry.command("ensure-default")
def registry_ensure_default() -> None:
    """Register the bundled default model as ``model_name@model_alias`` unless it exists."""
    from cerebrascan.registry import ensure_default_model

    settings = Settings()
    version = ensure_default_model(settings)
    click.echo(f"{settings.model_name}@{settings.model_alias} -> version {version}")
    from cerebrascan.classifiers.model_registry import ensure_bundled_classifiers

    for task, classifier_version in ensure_bundled_classifiers(settings).items():
        name = settings.classifiers.model_names[task]
        click.echo(f"{name}@{settings.classifiers.alias} -> version {classifier_version}")


@registry.command("register")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", default=None, help="Registered model name (default: settings).")
@click.option("--alias", default="champion", show_default=True)
def registry_register(folder: Path, name: str | None, alias: str) -> None:
    """Register a model folder (model.onnx, model_spec.json, model_card.md, metrics.json)."""
    from cerebrascan.registry import register_model_folder

    settings = Settings()
    version = register_model_folder(settings, folder, name=name or settings.model_name, alias=alias)
    click.echo(f"{name or settings.model_name} version {version} (alias {alias})")


@main.command("import-nnunet")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("more_folds", nargs=-1, metavar="")
@click.option("--name", required=True, help="Registered model name.")
@click.option(
    "--folds",
    multiple=True,
    help="Folds to ensemble: `--folds 0 1 2`, `--folds 0,1` or repeated (default: all).",
)
@click.option("--checkpoint", default="checkpoint_final.pth", show_default=True)
@click.option("--alias", default="champion", show_default=True)
@click.option(
    "--modalities",
    default=None,
    help="Comma-separated modality per nnU-Net channel, e.g. t1n,t1c,t2w,t2f (default: guessed "
    "from dataset.json channel_names).",
)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None)
def import_nnunet(
    folder: Path,
    more_folds: tuple[str, ...],
    name: str,
    folds: tuple[str, ...],
    checkpoint: str,
    alias: str,
    modalities: str | None,
    out_dir: Path | None,
) -> None:
    """Import an nnU-Net v2 training folder (plans.json, dataset.json, fold_*/) as ONE version.

    Needs the `nnunet` extra. A broken folder is refused and nothing is registered.
    """
    from cerebrascan.training.nnunet_import import NnunetImportError, import_nnunet_folder

    fold_list = [f for item in (*folds, *more_folds) for f in item.split(",") if f]
    try:
        result = import_nnunet_folder(
            Settings(),
            folder,
            name=name,
            alias=alias,
            out_dir=out_dir,
            folds=fold_list or None,
            checkpoint_name=checkpoint,
            modalities=modalities.split(",") if modalities else None,
        )
    except NnunetImportError as exc:
        raise click.ClickException(f"refused, nothing registered: {exc}") from exc
    click.echo(f"{name} version {result.version} (alias {alias}) from {result.folder}")


@main.group()
@click.option(
    "--params", "params_path", type=click.Path(exists=True, path_type=Path), default=DEFAULT_PARAMS
)
@click.pass_context
def pipeline(ctx: click.Context, params_path: Path) -> None:
    """Stages of ``dvc.yaml``: phantoms -> train -> export -> evaluate -> register."""
    from cerebrascan.training.params import load_params

    ctx.obj = load_params(params_path)


@pipeline.command("phantoms")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("data/phantoms"))
@click.pass_obj
def pipeline_phantoms(params: object, out_dir: Path) -> None:
    """Training and held-out phantom cohorts."""
    from cerebrascan.phantoms.writer import write_cohort
    from cerebrascan.training.params import PipelineParams

    assert isinstance(params, PipelineParams)
    p = params.phantoms
    for cohort, seed, n_cases in (
        ("train", p.train_seed, p.train_cases),
        ("test", p.test_seed, p.test_cases),
    ):
        write_cohort(
            out_dir / cohort,
            seed=seed,
            n_cases=n_cases,
            prefix=f"PHANTOM-{cohort.upper()}",
            type_probs=p.type_probs,
        )


@pipeline.command("train")
@click.option(
    "--cases", "cases_dir", type=click.Path(path_type=Path), default=Path("data/phantoms/train")
)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("data/train"))
@click.pass_obj
def pipeline_train(params: object, cases_dir: Path, out_dir: Path) -> None:
    """Train the network on phantom cases (MLflow-tracked)."""
    from cerebrascan.training.params import PipelineParams
    from cerebrascan.training.train import train

    assert isinstance(params, PipelineParams)
    summary = train(params, cases_dir, out_dir, Settings())
    click.echo(json.dumps(summary, indent=2))


@pipeline.command("export")
@click.option("--train-dir", type=click.Path(path_type=Path), default=Path("data/train"))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("models/default"))
@click.pass_obj
def pipeline_export(params: object, train_dir: Path, out_dir: Path) -> None:
    """Export the checkpoint to ONNX and check it against torch."""
    from cerebrascan.training.export import export_onnx
    from cerebrascan.training.params import PipelineParams

    assert isinstance(params, PipelineParams)
    difference = export_onnx(params, train_dir, out_dir)
    click.echo(f"max |torch - onnxruntime| = {difference:.2e}")


@pipeline.command("quantize")
@click.option("--model-dir", type=click.Path(path_type=Path), default=Path("models/default"))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where model.int8.xml/.bin and int8_calibration.json go (default: --model-dir).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=3000,
    show_default=True,
    help="Calibration phantom cohort seed (also seeds the tile positions).",
)
@click.option(
    "--n-cases",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Calibration phantoms generated from --seed.",
)
@click.option(
    "--cases",
    "cases_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Calibrate on these case folders (images and seg) instead of generated phantoms.",
)
@click.option("--tiles-per-case", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--preset",
    type=click.Choice(["performance", "mixed"]),
    default="performance",
    show_default=True,
)
@click.option("--fast-bias-correction/--full-bias-correction", default=True, show_default=True)
@click.option("--keep-first-conv-fp32/--quantize-first-conv", default=True, show_default=True)
@click.option("--keep-last-conv-fp32/--quantize-last-conv", default=True, show_default=True)
@click.option(
    "--activation-range",
    type=click.Choice(["default", "minmax"]),
    default="default",
    show_default=True,
    help="Activation ranges: NNCF's default for the preset, or the extremes over all tiles.",
)
def pipeline_quantize(
    model_dir: Path,
    out_dir: Path | None,
    seed: int,
    n_cases: int,
    cases_dir: Path | None,
    tiles_per_case: int,
    preset: str,
    fast_bias_correction: bool,
    keep_first_conv_fp32: bool,
    keep_last_conv_fp32: bool,
    activation_range: str,
) -> None:
    """int8 post-training quantisation (NNCF) for runner.precision=int8 on OpenVINO."""
    from cerebrascan.inputs.case_folder import list_cases
    from cerebrascan.training.quantize import QuantizeOptions, quantize_model_folder

    options = QuantizeOptions(
        seed=seed,
        cases=n_cases,
        tiles_per_case=tiles_per_case,
        preset="mixed" if preset == "mixed" else "performance",
        fast_bias_correction=fast_bias_correction,
        keep_first_conv_fp32=keep_first_conv_fp32,
        keep_last_conv_fp32=keep_last_conv_fp32,
        activation_range="minmax" if activation_range == "minmax" else "default",
    )
    try:
        record = quantize_model_folder(
            model_dir, options, out_dir, list_cases(cases_dir) if cases_dir else None
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{record['model']} in {out_dir or model_dir}: {record['calibration']['tiles']} tiles, "
        f"preset {record['preset']}, fp32 convolutions {record['ignored_scope'] or 'none'}"
    )


@pipeline.command("evaluate")
@click.option("--model-dir", type=click.Path(path_type=Path), default=Path("models/default"))
@click.option(
    "--cases", "cases_dir", type=click.Path(path_type=Path), default=Path("data/phantoms/test")
)
@click.option("--train-dir", type=click.Path(path_type=Path), default=Path("data/train"))
@click.pass_obj
def pipeline_evaluate(params: object, model_dir: Path, cases_dir: Path, train_dir: Path) -> None:
    """Held-out metrics (metrics.json) and the model card (model_card.md)."""
    from cerebrascan.training.evaluate import evaluate_model, model_card
    from cerebrascan.training.official_metrics import OfficialMetricsError
    from cerebrascan.training.params import PipelineParams

    assert isinstance(params, PipelineParams)
    try:
        metrics = evaluate_model(params, model_dir, cases_dir)
    except OfficialMetricsError as exc:
        raise click.ClickException(str(exc)) from None
    summary = json.loads((train_dir / "train_summary.json").read_text())
    metrics["train_summary"] = summary
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    card = model_card(metrics, params, summary)
    card = _with_precisions_section(card, model_dir)
    (model_dir / "model_card.md").write_text(card)
    click.echo(json.dumps(metrics["mean"], indent=2))


def _with_precisions_section(card: str, model_dir: Path) -> str:
    """The card with the "Reduced precisions" section of the folder's precisions.json (if any)."""
    from cerebrascan.training.precisions import precisions_card_section, with_precisions_section
    from runners.precision_record import read_precision_record

    record = read_precision_record(model_dir).record
    return with_precisions_section(card, precisions_card_section(record)) if record else card


@pipeline.command("precisions")
@click.option("--model-dir", type=click.Path(path_type=Path), default=Path("models/default"))
@click.option(
    "--cases",
    "cases_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("data/phantoms/test"),
    help="Held-out BraTS 2023 case folders with -seg files.",
)
@click.option(
    "--max-cases",
    type=click.IntRange(min=1),
    default=None,
    help="Use the first N cases (default: params precisions.held_out_cases).",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Phantom cohort seed of the cases, recorded (default: params phantoms.test_seed).",
)
@click.option(
    "--precision",
    "precisions",
    type=click.Choice(["bf16", "int8"]),
    multiple=True,
    help="Which to measure (repeatable); default: every one this CPU and folder offer.",
)
@click.option(
    "--engine-cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="OpenVINO compiled-model cache (default: the runner's, <data_dir>/engine-cache).",
)
@click.option(
    "--card/--no-card",
    default=True,
    show_default=True,
    help="Write the model card's Reduced precisions section (the dvc pipeline leaves it to "
    "the evaluate stage, which writes the card).",
)
@click.pass_obj
def pipeline_precisions(
    params: object,
    model_dir: Path,
    cases_dir: Path,
    max_cases: int | None,
    seed: int | None,
    precisions: tuple[str, ...],
    engine_cache_dir: Path | None,
    card: bool,
) -> None:
    """Held-out check of bf16 / int8 against fp32 (precisions.json, which admits them)."""
    from cerebrascan.inputs.case_folder import list_cases
    from cerebrascan.training.params import PipelineParams
    from cerebrascan.training.precisions import HeldOutCases, measure_precisions
    from runners.errors import RunnerConfigError
    from runners.precision_record import read_precision_record, write_precision_record

    assert isinstance(params, PipelineParams)
    folders = list_cases(cases_dir)[: max_cases or params.precisions.held_out_cases]
    if not folders:
        raise click.ClickException(f"no case folders under {cases_dir}")
    names = [folder.name for folder in folders]
    cases = HeldOutCases(
        folders=folders,
        seed=params.phantoms.test_seed if seed is None else seed,
        source=f"case folders {', '.join(names)}",
    )
    settings = Settings()
    try:
        record = measure_precisions(
            model_dir,
            cases,
            evaluate=params.evaluate,
            max_dice_change=params.precisions.max_dice_change,
            engine_cache_dir=engine_cache_dir or settings.engine_cache_dir,
            precisions=list(precisions) or None,
            previous=read_precision_record(model_dir).record,
        )
    except (RunnerConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    path = write_precision_record(model_dir, record)
    if card and (model_dir / "model_card.md").is_file():
        card_path = model_dir / "model_card.md"
        card_path.write_text(_with_precisions_section(card_path.read_text(), model_dir))
    for precision, entry in record.precisions.items():
        verdict = "passed" if entry.passed else f"failed: {entry.note}"
        click.echo(f"{precision}: 1 - Dice vs fp32 {entry.dice_change}; {verdict}")
    if not record.precisions:
        click.echo("no reduced precision runs on this CPU / folder: record holds fp32 only")
    click.echo(str(path))


@pipeline.command("register")
@click.option("--model-dir", type=click.Path(path_type=Path), default=Path("models/default"))
@click.option("--train-dir", type=click.Path(path_type=Path), default=Path("data/train"))
@click.option(
    "--record", type=click.Path(path_type=Path), default=Path("data/registry/registered.json")
)
@click.pass_obj
def pipeline_register(params: object, model_dir: Path, train_dir: Path, record: Path) -> None:
    """Register the evaluated model as a new version with alias ``champion``."""
    from cerebrascan.registry import register_model_folder

    settings = Settings()
    summary = json.loads((train_dir / "train_summary.json").read_text())
    version = register_model_folder(
        settings,
        model_dir,
        name=settings.model_name,
        alias=settings.model_alias,
        run_id=summary.get("mlflow_run_id"),
    )
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"name": settings.model_name, "version": version}, indent=2))
    click.echo(f"{settings.model_name} version {version}")


@main.group()
def apikey() -> None:
    """API keys for the server's access control (``auth`` settings)."""


@apikey.command("create")
@click.option("--name", required=True, help="Who holds the key; logged with its requests.")
@click.option("--role", type=click.Choice(["reader", "admin"]), required=True)
@click.option(
    "--tenant",
    default="default",
    show_default=True,
    help="Site or project the key belongs to; it reaches only that tenant's studies.",
)
def apikey_create(name: str, role: str, tenant: str) -> None:
    """Print a new key once, and the ``auth.api_keys`` entry (its hash) for the config file."""
    import pydantic
    import yaml

    from cerebrascan.serving.apikeys import new_key

    try:
        key, entry = new_key(name, role, tenant)  # type: ignore[arg-type]
    except pydantic.ValidationError as exc:
        raise click.BadParameter(str(exc.errors()[0]["msg"]), param_hint="--tenant") from None
    click.echo(f"API key (shown once, give it to {name}; it is not stored anywhere):\n{key}\n")
    click.echo("Add to auth.api_keys in the CEREBRASCAN_CONFIG file:")
    click.echo(yaml.safe_dump([entry.model_dump()], sort_keys=False).rstrip())


@main.group()
def storage() -> None:
    """S3 storage of versioned data (DVC) and MLflow artefacts (see docs/storage.md)."""


@storage.command("configure-dvc")
@click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
)
@click.option("--remote", default="storage", show_default=True, help="DVC remote name.")
def storage_configure_dvc(repo: Path, remote: str) -> None:
    """Make ``storage.dvc_remote_url`` the default DVC remote of ``repo`` (no credentials)."""
    from cerebrascan.storage import configure_dvc_remote

    settings = Settings()
    try:
        configure_dvc_remote(settings.storage, repo, remote_name=remote)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"DVC remote {remote!r} -> {settings.storage.dvc_remote_url}")


@main.command("dicom-listen")
@click.option("--host", default=None, help="Address to bind (default: pacs.listen_host).")
@click.option("--port", type=int, default=None, help="DICOM port (default: pacs.listen_port).")
def dicom_listen(host: str | None, port: int | None) -> None:
    """Receive DICOM studies (C-STORE SCP) and analyse each once it goes quiet (docs/dicom.md)."""
    import signal

    from cerebrascan.brain_extraction.extractor import BrainExtractor
    from cerebrascan.imaging.coregistration import register_rigid
    from cerebrascan.inputs.dicom.selection import load_rules
    from cerebrascan.pacs.analysis import SpooledStudyAnalyser
    from cerebrascan.pacs.listener import DicomListener
    from cerebrascan.pacs.spool import StudySpool
    from cerebrascan.pipeline import AnalysisPipeline
    from cerebrascan.registry import resolve_model

    settings = Settings()
    pacs = settings.pacs.model_copy(update={"listen_host": host} if host else {})
    # pynetdicom's INFO/DEBUG lines describe associations and datasets: keep them out
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    strip_skull = None
    try:
        strip_skull = BrainExtractor.from_settings(settings.brain_extraction).mask
    except (FileNotFoundError, ValueError, OSError) as exc:
        logger.warning("no brain extraction: received studies must be skull-stripped: %s", exc)
    pipeline = AnalysisPipeline(settings, resolve_model(settings))
    analyser = SpooledStudyAnalyser(
        pipeline,
        load_rules(settings.dicom.rules_file),
        strip_skull=strip_skull,
        register=register_rigid,
    )
    spool = StudySpool(settings.pacs.spool_dir or settings.data_dir / "pacs-spool")
    listener = DicomListener(pacs, spool, analyser, port=port)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: listener.request_stop())
    listener.serve_forever()


def _add_classifier_commands() -> None:
    from cerebrascan.classifiers.cli import classifiers

    main.add_command(classifiers)


_add_classifier_commands()


def _add_nnunet_commands() -> None:
    # `cerebrascan pipeline nnunet convert|plan|train|import|evaluate|register`
    from cerebrascan.training.nnunet_cli import nnunet

    pipeline.add_command(nnunet)


_add_nnunet_commands()


def _add_cohort_commands() -> None:
    # Ray is imported only when `cohort run` works (the `cohort` extra), not here
    from cerebrascan.cohorts.cli import cohort

    main.add_command(cohort)


_add_cohort_commands()


def _add_dataset_and_model_commands() -> None:
    from cerebrascan.datasets.cli import dataset
    from cerebrascan.training.models_cli import models

    main.add_command(dataset)
    main.add_command(models)


_add_dataset_and_model_commands()


if __name__ == "__main__":
    main()
