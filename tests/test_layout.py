"""The layout's rules (docs/architecture.md), checked on the source: dependencies point downwards.

Every import statement of the served packages is read with :mod:`ast` (imports inside functions
and ``TYPE_CHECKING`` blocks included), so a new upward import fails here, not in review.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

#: package -> the top-level packages (or dotted prefixes) it may never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # engines know the model spec and their own settings, nothing of the server
    "runners": ("cerebrascan", "plugins", "service"),
    # contracts are the bottom layer
    "schemas": ("cerebrascan", "plugins", "runners", "service"),
    # analyzers get their inputs and settings handed in; they never reach the pipeline, the
    # transports or the stores
    "plugins": (
        "cerebrascan.settings",  # the composed Settings: analyzers get their sections handed in
        "cerebrascan.pipeline",
        "cerebrascan.serving",
        "cerebrascan.store",
        "cerebrascan.inputs",
        "cerebrascan.registry",
        "runners",
        "service",
    ),
    # transports' decoders end in a Study; they know nothing of what runs on it
    "cerebrascan/inputs": (
        "cerebrascan.pipeline",
        "cerebrascan.serving",
        "cerebrascan.store",
        "plugins",
        "runners",
        "service",
    ),
    # maths on images below everything that serves
    "cerebrascan/imaging": (
        "cerebrascan.pipeline",
        "cerebrascan.serving",
        "cerebrascan.store",
        "plugins",
        "service",
    ),
    "cerebrascan/atlas": ("cerebrascan.pipeline", "cerebrascan.serving", "plugins", "service"),
    # brain masks of skull-on series: maths and an ONNX session, below the DICOM input that
    # calls it (through an injected callable) and everything that serves
    "cerebrascan/brain_extraction": (
        "cerebrascan.pipeline",
        "cerebrascan.serving",
        "cerebrascan.store",
        "cerebrascan.inputs",
        "cerebrascan.atlas",
        "cerebrascan.phantoms",
        "plugins",
        "runners",
        "service",
    ),
    "cerebrascan/longitudinal": (
        "cerebrascan.pipeline",
        "cerebrascan.serving",
        "plugins",
        "service",
    ),
    "cerebrascan/store": ("cerebrascan.pipeline", "cerebrascan.serving", "plugins", "service"),
    # pictures of stored studies: below the report (which uses the palette and montage) and
    # the routes that serve them
    "cerebrascan/views": (
        "cerebrascan.pipeline",
        "cerebrascan.serving",
        "cerebrascan.report",
        "plugins",
        "service",
    ),
    # DICOM outputs of stored studies: below the routes that serve them; the report comes in
    # as rendered bytes
    "cerebrascan/dicom_out": (
        "cerebrascan.pipeline",
        "cerebrascan.serving",
        "cerebrascan.report",
        "cerebrascan.inputs",
        "plugins",
        "runners",
        "service",
    ),
    # cohorts run the pipeline offline; the service submits them, never the other way round
    "cerebrascan/cohorts": ("cerebrascan.serving", "service"),
    # a lab's datasets: checked and versioned offline, below training; nothing that serves
    "cerebrascan/datasets": (
        "cerebrascan.pipeline",
        "cerebrascan.serving",
        "cerebrascan.store",
        "cerebrascan.registry",
        "cerebrascan.training",
        "plugins",
        "runners",
        "service",
    ),
    # the DICOM receiver runs the pipeline like a transport; the send route (serving) calls
    # its senders, never the other way round
    "cerebrascan/pacs": ("cerebrascan.serving", "service", "plugins", "runners"),
}

MAX_ROOT_MODULES = 10


def imported_modules(path: Path, root: Path = REPO_ROOT) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every import in ``path``; relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module
            # ``from cerebrascan import pipeline`` imports cerebrascan.pipeline
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}" if module else alias.name


def violations(folder: str, forbidden: tuple[str, ...], root: Path = REPO_ROOT) -> list[str]:
    """``path:line imports module`` for each import under ``root/folder`` of a forbidden one."""
    found: list[tuple[str, int, str]] = []
    for path in sorted((root / folder).rglob("*.py")):
        for line, module in imported_modules(path, root):
            if any(module == prefix or module.startswith(prefix + ".") for prefix in forbidden):
                found.append((str(path.relative_to(root)), line, module))
    return [f"{path}:{line} imports {module}" for path, line, module in sorted(found)]


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_dependencies_point_downwards(folder: str) -> None:
    assert (REPO_ROOT / folder).is_dir(), f"{folder} is gone: update docs/architecture.md"
    assert violations(folder, FORBIDDEN[folder]) == []


def test_the_checker_sees_upward_imports(tmp_path: Path) -> None:
    # the rule above must be able to fail: upward imports in a scratch tree are caught, in a
    # function body or through ``from package import module``
    (tmp_path / "runners" / "engines").mkdir(parents=True)
    (tmp_path / "runners" / "engines" / "probe.py").write_text(
        "def f():\n    from cerebrascan.pipeline import AnalysisPipeline\n"
        "from cerebrascan import settings\n"
        "import numpy\n"
    )
    assert violations("runners", FORBIDDEN["runners"], root=tmp_path) == [
        "runners/engines/probe.py:2 imports cerebrascan.pipeline",
        "runners/engines/probe.py:2 imports cerebrascan.pipeline.AnalysisPipeline",
        "runners/engines/probe.py:3 imports cerebrascan",
        "runners/engines/probe.py:3 imports cerebrascan.settings",
    ]


def test_no_analyzer_reads_its_own_configuration() -> None:
    # settings reach analyzers through register_analyzers(settings); none reads the environment
    for path in sorted((REPO_ROOT / "plugins").rglob("*.py")):
        modules = {module for _, module in imported_modules(path)}
        source = path.read_text()
        assert "pydantic_settings" not in modules, path
        assert "os.environ" not in source and "getenv" not in source, path


def test_cerebrascan_root_keeps_few_loose_modules() -> None:
    loose = sorted(p.name for p in (REPO_ROOT / "cerebrascan").glob("*.py"))
    assert len(loose) <= MAX_ROOT_MODULES, loose


def test_no_transport_writes_temporary_files() -> None:
    # transports hand a decoded Study to the pipeline; a temporary file would mean decoding twice
    for path in sorted((REPO_ROOT / "cerebrascan" / "serving" / "grpc").rglob("*.py")):
        modules = {module for _, module in imported_modules(path)}
        assert "tempfile" not in modules, path
