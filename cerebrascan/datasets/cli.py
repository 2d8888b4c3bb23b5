"""``cerebrascan dataset check|add``: a lab's BraTS-style folder, checked and versioned."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group()
def dataset() -> None:
    """BraTS-style datasets: check a folder, add it under DVC (docs/training.md)."""


@dataset.command("check")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
def dataset_check(root: Path) -> None:
    """Check a BraTS 2023 (or 2021) folder: one line per problem, exit code 1 when any."""
    from cerebrascan.datasets.scan import scan_dataset

    report = scan_dataset(root)
    for line in report.problems:
        click.echo(line)
    for line in report.notes:
        click.echo(line, err=True)
    if not report.ok:
        click.echo(f"{len(report.problems)} problem(s) in {len(report.cases)} case(s)", err=True)
        sys.exit(1)
    click.echo(f"{len(report.cases)} case(s), no problem", err=True)


@dataset.command("add")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Folder name under data/datasets/.")
@click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The DVC repository (its default remote receives the push).",
)
@click.option("--push/--no-push", default=True, show_default=True)
def dataset_add(root: Path, name: str, repo: Path, push: bool) -> None:
    """Check, copy to data/datasets/NAME (BraTS 2023 naming), `dvc add` and `dvc push`."""
    from cerebrascan.datasets.add import DatasetError, add_dataset

    try:
        added = add_dataset(root, name, repo, push=push)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{added.cases} case(s) in {added.folder}; commit {added.dvc_file}"
        + (" (pushed)" if added.pushed else " (not pushed)")
    )
