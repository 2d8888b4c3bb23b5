"""Docs that cannot drift: README.md and docs/ checked against the served app, the settings
model, the repository's files, the CLI and the JSON their figures come from.

The checks and their rules are in ``tests/docs_checks.py`` (and docs/README.md). Each is run on
every document, expecting no problem, and on a made-up text, expecting the problem it exists to
find. The generated blocks (route table, settings reference) must equal what
``python -m cerebrascan.docs_reference`` writes now (``make docs`` after adding a route or a
setting).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cerebrascan.cli import main as cli_main
from cerebrascan.docs_reference import generated_blocks, setting_rows, stale_files
from cerebrascan.serving.http.openapi import merged_spec, served_routes
from tests.docs_checks import (
    SettingsIndex,
    command_problems,
    figure_problems,
    link_problems,
    route_problems,
    settings_problems,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").rglob("*.md")])
IDS = [str(path.relative_to(REPO_ROOT)) for path in DOCUMENTS]


@pytest.fixture(scope="module")
def app() -> Iterator[Any]:
    """The service's ASGI app (no lifespan: routes and spec need no model)."""
    from service import CerebraScan

    yield CerebraScan.to_asgi()


@pytest.fixture(scope="module")
def served(app: Any) -> list[tuple[str, str]]:
    return served_routes(app)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    from service import CerebraScan

    return merged_spec(CerebraScan)


@pytest.fixture(scope="module")
def index() -> SettingsIndex:
    return SettingsIndex(setting_rows())


# --- generated blocks ----------------------------------------------------------------------


def test_generated_blocks_are_what_the_code_generates(spec: dict[str, Any]) -> None:
    stale = stale_files(generated_blocks(spec))
    assert stale == [], f"stale generated blocks in {stale}: run `make docs` and commit"


def test_the_route_table_lists_every_served_route(served: list[tuple[str, str]]) -> None:
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("<!-- BEGIN generated:routes")[1].split("<!-- END generated:routes")[0]
    rows = {
        (cells[1], cells[2].strip("`"))
        for line in block.splitlines()
        if line.startswith("| ")
        and (cells := [c.strip() for c in line.split("|")])[1] != "method"
        and not cells[1].startswith("-")
    }
    assert rows == set(served)


def test_the_settings_reference_lists_every_setting() -> None:
    text = (REPO_ROOT / "docs" / "settings.md").read_text()
    for row in setting_rows():
        assert f"| `{row.env}`" in text, row.env


# --- every document ------------------------------------------------------------------------


@pytest.mark.parametrize("document", DOCUMENTS, ids=IDS)
def test_routes_in_docs_are_served(document: Path, served: list[tuple[str, str]]) -> None:
    assert route_problems(document.read_text(), served) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=IDS)
def test_settings_in_docs_exist_with_their_defaults(document: Path, index: SettingsIndex) -> None:
    assert settings_problems(document.read_text(), index) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=IDS)
def test_links_and_paths_in_docs_resolve(document: Path) -> None:
    assert link_problems(document.read_text(), document) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=IDS)
def test_commands_in_docs_parse(document: Path) -> None:
    assert command_problems(document.read_text(), cli_main) == []


def test_readme_figures_are_those_of_the_json_they_cite() -> None:
    text = (REPO_ROOT / "README.md").read_text()
    assert "<!-- figure " in text
    assert figure_problems(text) == []


# --- the checks find what they exist to find -----------------------------------------------


def test_route_check_finds_an_unserved_route(served: list[tuple[str, str]]) -> None:
    text = "`GET /docs`, `GET /studies/<study_id>/segmentation`, `POST /plugins`, `GET /readyz`"
    assert route_problems(text, served) == [
        "GET /docs is not served",
        "POST /plugins is not served",
    ]
    assert route_problems("`GET /studies/{id}/report?format=json|md`", served) == []


def test_settings_check_finds_names_keys_and_defaults(index: SettingsIndex) -> None:
    text = "\n".join(
        [
            "Use `CEREBRASCAN_BATCHING__RUNNER_URL`, `__RUNNER_TOKN` and `CEREBRASCAN_NOPE`;",
            "`batching.remote_runner: false`, `batching.remote_runer`, `plugins.testing`.",
            "",
            "| setting | environment | default |",
            "|---|---|---|",
            "| limits | `CEREBRASCAN_LIMITS__MAX_UPLOAD_MB`, `__MAX_VOXELS` | 512, 400 |",
            "| jobs | `CEREBRASCAN_JOBS__RESULT_RETENTION_S` | 86400 |",
            "",
            "Settings (`CEREBRASCAN_GRPC__*`):",
            "",
            "| setting | default | meaning |",
            "|---|---|---|",
            "| `port` | 8002 | gRPC port |",
            "| `threads` | 4 | threads |",
        ]
    )
    assert settings_problems(text, index) == [
        "CEREBRASCAN_NOPE is not a setting",
        "__RUNNER_TOKN (after a batching setting): CEREBRASCAN_BATCHING__RUNNER_TOKN is not a "
        "setting",
        "`batching.remote_runer`: batching.remote_runer is not a setting",
        "CEREBRASCAN_LIMITS__MAX_VOXELS: default stated '400', the model's is 64000000",
        "CEREBRASCAN_GRPC__PORT: default stated '8002', the model's is 8001",
    ]


def test_link_check_finds_missing_files_anchors_and_paths() -> None:
    document = REPO_ROOT / "docs" / "deploy.md"
    text = (
        "[a](serving.md) [b](serving.md#no-such-heading) [c](gpu2.md) [d](../README.md#layout)"
        " `cerebrascan/serving/runner_service.py` `benchmarks/gpu_engines.py` `data/x.db`"
    )
    assert link_problems(text, document) == [
        "link serving.md#no-such-heading: no heading #no-such-heading in serving.md",
        "link gpu2.md: gpu2.md does not exist",
        "path `benchmarks/gpu_engines.py` does not exist",
    ]


def test_command_check_finds_commands_that_would_not_run() -> None:
    text = "\n".join(
        [
            "```sh",
            "PORT=8080 make serve && make nonesuch",
            ".venv/bin/cerebrascan phantom --out /tmp/p --seed 7 --n 1",
            ".venv/bin/cerebrascan phantom --outdir /tmp/p",
            "cerebrascan registry promote 3",
            "bentoml serve runner:CerebraScanRunner --port 3001 &",
            "bentoml serve service:NoSuchService",
            "python benchmarks/gpu_engines.py",
            "python -m cerebrascan.docs_reference --check",
            "curl -s localhost:3000/readyz   # not ours to check",
            "```",
        ]
    )
    assert command_problems(text, cli_main) == [
        "make nonesuch: no such target",
        "cerebrascan phantom: no option --outdir",
        "cerebrascan registry promote: no such command",
        "bentoml serve service:NoSuchService: NoSuchService not in service.py",
        "python benchmarks/gpu_engines.py: no such file",
    ]


def test_figure_check_finds_wrong_and_uncited_figures() -> None:
    text = "\n".join(
        [
            "## Figures",
            "<!-- figure 0.970 = models/default/metrics.json#/mean/WT_dice -->",
            "<!-- figure 0.99 = models/default/metrics.json#/mean/TC_dice -->",
            "<!-- figure 8.1 % = max models/default/metrics.json"
            "#/per_case/*/WT_volume_relative_error -->",
            "WT 0.970, TC 0.99, ET 0.903 (target ≥ 0.80), worst 8.1 %; "
            "[m](models/default/metrics.json)",
            "## Elsewhere",
            "see [r](benchmarks/results/report_cpu2.json)",
        ]
    )
    assert figure_problems(text) == [
        "figure 0.99 = models/default/metrics.json#/mean/TC_dice: the JSON says 0.97",
        "line 5: figure 0.903 cites no JSON",
        "line 7: links benchmarks/results/report_cpu2.json without a figure comment",
    ]
