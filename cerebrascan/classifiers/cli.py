"""``cerebrascan classifiers ...``: the stages of the classifier pipeline (see ``dvc.yaml``)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

PARAMS_OPTION = click.option(
    "--params",
    "params_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=Path("params.yaml"),
    show_default=True,
)

COHORTS_OPTION = click.option(
    "--cohorts",
    "cohort_dir",
    type=click.Path(path_type=Path),
    default=Path("data/classifiers/cohorts"),
)
FEATURES_OPTION = click.option(
    "--features",
    "features_dir",
    type=click.Path(path_type=Path),
    default=Path("data/classifiers/features"),
)
MODELS_OPTION = click.option(
    "--models", "models_dir", type=click.Path(path_type=Path), default=Path("models/classifiers")
)
SEGMENTATION_MODEL_OPTION = click.option(
    "--segmentation-model",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("models/default"),
    show_default=True,
    help="Segmentation model folder behind the features on the predicted segmentation.",
)


@click.group("classifiers")
def classifiers() -> None:
    """Tumour type / grade / IDH / MGMT classifiers on phantom cohorts (research use only)."""
    logging.getLogger("radiomics").setLevel(logging.ERROR)


@classifiers.command("cohort")
@PARAMS_OPTION
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("data/classifiers/cohorts")
)
def cohort(params_path: Path, out_dir: Path) -> None:
    """Truth records of the training, held-out and shifted cohorts."""
    from cerebrascan.classifiers.params import load_classifier_params
    from cerebrascan.classifiers.stages import run_cohort_stage

    run_cohort_stage(load_classifier_params(params_path), out_dir)


@classifiers.command("features")
@PARAMS_OPTION
@COHORTS_OPTION
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("data/classifiers/features")
)
@SEGMENTATION_MODEL_OPTION
def features(params_path: Path, cohort_dir: Path, out_dir: Path, segmentation_model: Path) -> None:
    """Render every case, segment it with the default model and extract its features on the
    ground-truth labels and on the predicted segmentation."""
    from cerebrascan.classifiers.feature_stage import run_features_stage
    from cerebrascan.classifiers.params import load_classifier_params

    run_features_stage(
        load_classifier_params(params_path).workers, cohort_dir, out_dir, segmentation_model
    )


@classifiers.command("train")
@PARAMS_OPTION
@COHORTS_OPTION
@FEATURES_OPTION
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("models/classifiers")
)
@SEGMENTATION_MODEL_OPTION
@click.option(
    "--cases",
    "cases_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="BraTS-style case folders to train on with --labels (instead of the phantom cohort).",
)
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Clinical table (CSV) of the --cases: IDH, MGMT, grade, histology columns as TCGA "
    "gives them (docs/classifiers.md).",
)
@click.option(
    "--work",
    "work_dir",
    type=click.Path(path_type=Path),
    default=Path("data/classifiers/labelled"),
    show_default=True,
    help="Where --labels writes its cohort, features and summary.",
)
@click.option(
    "--test-cases",
    "test_cases_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Held-out case folders (not trained on) evaluated with --test-labels: each model "
    "folder gets metrics.json and a model card with the held-out figures.",
)
@click.option(
    "--test-labels",
    "test_labels_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The clinical table of --test-cases.",
)
def train(
    params_path: Path,
    cohort_dir: Path,
    features_dir: Path,
    out_dir: Path,
    segmentation_model: Path,
    cases_dir: Path | None,
    labels_csv: Path | None,
    work_dir: Path,
    test_cases_dir: Path | None,
    test_labels_csv: Path | None,
) -> None:
    """Fit the four calibrated classifiers and their OOD detectors (on the phantom cohort, or
    on ``--cases`` with ``--labels``)."""
    import json

    from cerebrascan.classifiers.params import load_classifier_params
    from cerebrascan.classifiers.stages import run_train_stage

    if (cases_dir is None) != (labels_csv is None):
        raise click.UsageError("--cases and --labels go together")
    if cases_dir is not None and labels_csv is not None:
        from cerebrascan.classifiers.labels_stage import run_labels_train_stage

        try:
            summary = run_labels_train_stage(
                load_classifier_params(params_path),
                cases_dir,
                labels_csv,
                out_dir,
                work_dir,
                segmentation_model=segmentation_model,
                test_cases_dir=test_cases_dir,
                test_labels_csv=test_labels_csv,
            )
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(json.dumps(summary, indent=2))
        return
    run_train_stage(
        load_classifier_params(params_path),
        cohort_dir,
        features_dir,
        out_dir,
        segmentation_model=segmentation_model,
    )


@classifiers.command("evaluate")
@PARAMS_OPTION
@COHORTS_OPTION
@FEATURES_OPTION
@MODELS_OPTION
def evaluate(params_path: Path, cohort_dir: Path, features_dir: Path, models_dir: Path) -> None:
    """Held-out metrics, reliability plots, OOD rates and model cards."""
    from cerebrascan.classifiers.params import load_classifier_params
    from cerebrascan.classifiers.stages import run_evaluate_stage

    run_evaluate_stage(load_classifier_params(params_path), cohort_dir, features_dir, models_dir)


@classifiers.command("register")
@MODELS_OPTION
@click.option(
    "--record", type=click.Path(path_type=Path), default=Path("data/classifiers/registered.json")
)
def register(models_dir: Path, record: Path) -> None:
    """Register every classifier folder with alias ``champion``."""
    from cerebrascan.classifiers.stages import run_register_stage

    for task, version in run_register_stage(models_dir, record).items():
        click.echo(f"{task}: version {version}")
