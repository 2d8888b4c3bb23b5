"""The third-party example plugin, installed for real (pip) and seen by a host and the server.

The package in ``examples/cerebrascan-example-plugin`` is installed with
``pip install --no-deps --no-build-isolation --no-index --target <tmp>`` (the project's
``.venv`` is not changed), the target folder is put on ``sys.path`` and the import caches are
invalidated, so ``importlib.metadata`` finds its entry point. A host built afterwards sees it.
The service built its host when ``service.py`` was imported, so the ASGI tests call
``service.HOST.reload()`` after installing, and again after removing the folder.
"""

from __future__ import annotations

import gzip
import importlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cerebrascan.inputs.case_folder import modality_path
from plugins.host import AnalyzerHost
from plugins.settings import PluginSettings
from plugins.testing import MemoryArtefactSink, study_inputs
from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "cerebrascan-example-plugin"
MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def _purge_modules() -> None:
    for name in [m for m in sys.modules if m.startswith(("cerebrascan_example_plugin", "cs_"))]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def example_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example plugin pip-installed into a temporary folder on ``sys.path``, beside a
    distribution whose entry point fails to import."""
    source = tmp_path_factory.mktemp("example-source") / "cerebrascan-example-plugin"
    # build from a copy: pip builds in place and must not leave build/ or *.egg-info behind
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    target = tmp_path_factory.mktemp("example-target")
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--target",
        str(target),
        str(source),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    (target / "cs_broken_plugin.py").write_text("import this_dependency_is_not_installed\n")
    dist_info = target / "cs_broken_plugin-0.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: cs-broken-plugin\nVersion: 0.3\n"
    )
    (dist_info / "entry_points.txt").write_text("[cerebrascan]\nbroken = cs_broken_plugin\n")
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    _purge_modules()
    importlib.invalidate_caches()
    if "service" in sys.modules:  # leave the service's host as it was before the install
        sys.modules["service"].HOST.reload()


def test_installed_example_is_listed_and_runs_after_volumetrics(example_installed: Path) -> None:
    host = AnalyzerHost(PluginSettings())
    plugins = {p.name: p for p in host.listing().plugins}
    example = plugins["edema_index"]
    assert example.version == "0.1.0"
    assert not example.builtin
    (info,) = example.analyzers
    assert info.depends_on == ["volumetrics"]
    assert info.result_schema["title"] == "EdemaIndexResult"
    assert "ModuleNotFoundError" in host.failed_to_load["broken"]
    module = sys.modules["cerebrascan_example_plugin.plugin"]
    assert Path(module.__file__ or "").is_relative_to(example_installed)

    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:6, 2:6, 2:6] = 3  # 64 voxels of ET
    labels[10:18, 10:18, 10:13] = 2  # 192 voxels of SNFH
    outcomes = host.run(study_inputs(labels), artefacts=MemoryArtefactSink())
    assert list(outcomes).index("volumetrics") < list(outcomes).index("edema_index")
    outcome = outcomes["edema_index"]
    assert outcome.status == "ok", outcome.error
    assert outcome.plugin == "edema_index"
    assert outcome.result == {
        "edema_index": pytest.approx(3.0),
        "category": "severe",
        "snfh_ml": pytest.approx(0.192),
        "tc_ml": pytest.approx(0.064),
    }


def test_example_is_skipped_when_volumetrics_is_blocked(example_installed: Path) -> None:
    host = AnalyzerHost(PluginSettings(block=["volumetrics"]))
    outcome = host.run(study_inputs(np.zeros((8, 8, 8))), artefacts=MemoryArtefactSink())[
        "edema_index"
    ]
    assert outcome.status == "error"
    assert "unknown analyzer(s) ['volumetrics']" in (outcome.error or "")


@pytest.fixture(scope="module")
def service_with_example(asgi_client, example_installed: Path) -> object:
    """The in-process service after ``HOST.reload()`` picked the example plugin up."""
    from service import HOST

    HOST.reload()  # example_installed reloads it again once the folder is off sys.path
    return asgi_client


def _files(case: Path) -> dict[str, tuple[str, bytes, str]]:
    return {
        m: (f"{m}.nii.gz", modality_path(case, m).read_bytes(), "application/gzip")
        for m in MODALITIES
    }


def test_service_lists_the_example_and_the_plugin_that_failed(service_with_example) -> None:
    listing = service_with_example.get("/plugins").json()
    names = {p["name"]: p for p in listing["plugins"]}
    assert names["volumetrics"]["builtin"] is True
    assert names["edema_index"]["version"] == "0.1.0"
    assert "ModuleNotFoundError" in listing["failed_to_load"]["broken"]


def test_service_runs_the_example_with_its_options_and_serves_its_artefact(
    service_with_example, phantom_case: Path
) -> None:
    client = service_with_example
    options = {"analyzers": {"edema_index": {"write_mask": True}}}
    response = client.post(
        "/analyze", files=_files(phantom_case), data={"options": json.dumps(options)}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    analyzers = answer["analyzers"]
    names = list(analyzers)
    assert "edema_index" in names
    assert names.index("volumetrics") < names.index("edema_index")  # dependency order
    volumetrics = analyzers["volumetrics"]
    assert volumetrics["status"] == "ok", volumetrics["error"]
    assert volumetrics["result"]["volumes_ml"] == pytest.approx(answer["volumes_ml"])
    edema = analyzers["edema_index"]
    assert edema["status"] == "ok", edema["error"]
    volumes = answer["volumes_ml"]
    if volumes["TC"] > 0:
        assert edema["result"]["edema_index"] == pytest.approx(volumes["SNFH"] / volumes["TC"])
    else:
        assert edema["result"]["edema_index"] is None
    (artefact,) = edema["artefacts"]
    assert artefact["url"] == f"/studies/{answer['study_id']}/artefacts/edema_index_snfh"
    fetched = client.get(artefact["url"])
    assert fetched.status_code == 200
    mask = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(fetched.content)).dataobj)
    assert mask.shape == tuple(answer["geometry"]["shape"])
    voxel_ml = float(np.prod(answer["geometry"]["spacing_mm"])) / 1000
    assert mask.sum() * voxel_ml == pytest.approx(volumes["SNFH"])
    stored = client.get(f"/studies/{answer['study_id']}").json()
    assert stored["analyzers"]["edema_index"]["result"] == edema["result"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"analyzers": {"nope": {}}}, "unknown analyzer(s) ['nope']"),
        ({"analyzers": {"volumetrics": {"midline_tolerance_mm": -1}}}, "midline_tolerance_mm"),
    ],
)
def test_bad_analyzer_options_are_a_400_naming_them(
    service_with_example, phantom_case: Path, options: dict, message: str
) -> None:
    response = service_with_example.post(
        "/analyze", files=_files(phantom_case), data={"options": json.dumps(options)}
    )
    assert response.status_code == 400
    assert message in response.text
