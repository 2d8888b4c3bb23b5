"""The viewer in a real browser: Debian's Chromium, headless (WebGL through SwiftShader), driven
over the Chrome DevTools Protocol, on the real view routes behind the real API-key middleware
(uvicorn on loopback). One browser and one server for the module.

Checked as a person would: the page opens with the key in the URL fragment (which never reaches
the server) and forgets the fragment, the label colours appear where the lesion is (patient's
right on the viewer's left), hiding a label removes its colour, surfaces load, and without a key
the page asks for one instead of showing anything.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from cerebrascan.serving.apikeys import new_key
from cerebrascan.serving.http.auth import ApiKeyMiddleware
from cerebrascan.serving.http.studies import studies_app
from cerebrascan.serving.http.views import palette_app
from cerebrascan.serving.settings import AuthSettings
from cerebrascan.testing.devtools import DevTools, headless_chromium, loopback_server
from cerebrascan.views import palette


@pytest.fixture(scope="module")
def viewer_study(reported_study: dict, phantom_case: Path) -> dict:
    """The reported study (with the analyzers' biopsy targets) copied under a new id with a
    display copy of its t1c, saved by the store's own writer (no second analysis)."""
    import nibabel as nib

    from cerebrascan.inputs.case_folder import modality_path
    from cerebrascan.store.artefacts import StudyArtefacts
    from cerebrascan.views.display import display_copy
    from service import SETTINGS

    store = StudyArtefacts(SETTINGS.studies_dir)
    labels, affine = store.load_labels(reported_study["study_id"])
    study_id = "d" * 32
    result = (SETTINGS.studies_dir / reported_study["study_id"] / "result.json").read_text()
    store.save(study_id, labels, affine, result)
    t1c = np.asarray(nib.load(modality_path(phantom_case, "t1c")).dataobj, dtype=np.float32)
    store.save_display_image(study_id, "t1c", display_copy(t1c), affine)
    return {**reported_study, "study_id": study_id}


@pytest.fixture(scope="module")
def browser() -> Iterator[DevTools]:
    """One headless Chromium for the module (Debian's chromium: `make chromium`)."""
    with headless_chromium(width=900, height=600) as tools:
        yield tools


@pytest.fixture(scope="module")
def secured_views(asgi_client) -> Iterator[tuple[str, str]]:
    """(base URL, reader key): the studies and palette routes with API keys on, on loopback."""
    from service import SETTINGS

    key, entry = new_key("viewer-test", "reader")
    app = Starlette(
        routes=[Mount("/studies", studies_app(SETTINGS.studies_dir)), Mount("/", palette_app())]
    )
    with loopback_server(
        ApiKeyMiddleware(app, AuthSettings(enabled=True, api_keys=[entry]))
    ) as url:
        yield url, key


NAMES = ("background", "NETC", "SNFH", "ET")


def _near(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 30) -> np.ndarray:
    return np.abs(image.astype(int) - np.asarray(rgb)).sum(axis=2) < tolerance


def _canvas(tools: DevTools) -> np.ndarray:
    return tools.element_pixels("gl")


def _largest_label(study: dict, studies_dir: Path) -> tuple[str, list[float], float]:
    """The label with most voxels, the RAS mm of its centroid and the grid centre's x."""
    import nibabel as nib

    labels = nib.load(studies_dir / study["study_id"] / "segmentation.nii.gz")
    data = np.asarray(labels.dataobj)
    affine = labels.affine
    counts = {name: int((data == value).sum()) for value, name in enumerate(NAMES) if value}
    name = max(counts, key=lambda label: counts[label])
    centre = np.argwhere(data == NAMES.index(name)).mean(axis=0)
    grid_centre = (np.asarray(data.shape) - 1) / 2
    return (
        name,
        (affine[:3, :3] @ centre + affine[:3, 3]).tolist(),
        float((affine[:3, :3] @ grid_centre + affine[:3, 3])[0]),
    )


def test_viewer_shows_the_labels_where_the_lesion_is_and_hides_them(
    browser: DevTools,
    secured_views,
    viewer_study,
) -> None:
    from service import SETTINGS

    base, key = secured_views
    study_id = viewer_study["study_id"]
    browser.open(f"{base}/studies/{study_id}/viewer#key={key}")
    browser.wait_for("window.viewerState.ready || window.viewerState.error")
    assert browser.evaluate("window.viewerState.error") is None
    # the key left the address bar and stays in this tab only
    assert browser.evaluate("window.location.hash") == ""
    assert browser.evaluate("sessionStorage.getItem('cerebrascan-api-key')") == key
    name, centre_mm, head_x = _largest_label(viewer_study, SETTINGS.studies_dir)
    colour = palette.rgb_of(name)
    browser.evaluate(
        f"nv.setSliceType(0); nv.scene.crosshairPos = nv.mm2frac({json.dumps(centre_mm)});"
        "nv.setOpacity(nv.volumes.length - 1, 1.0); nv.drawScene(); true"
    )
    time.sleep(0.5)
    before = _canvas(browser)
    lesion = _near(before, colour)
    assert lesion.sum() > 200, f"no {name} colour on the axial slice through its centre"
    # radiological: a lesion in the patient's right (x > centre) is on the viewer's left
    head_columns = np.nonzero(before.sum(axis=2) > 60)[1]
    middle = (head_columns.min() + head_columns.max()) / 2
    lesion_column = np.nonzero(lesion)[1].mean()
    assert (lesion_column < middle) == (centre_mm[0] > head_x), (lesion_column, middle)

    toggle = f"document.getElementById('label-{name}').click(); true"
    browser.evaluate(toggle)
    time.sleep(0.5)
    assert _near(_canvas(browser), colour).sum() < 0.02 * lesion.sum()
    browser.evaluate(toggle)
    time.sleep(0.3)
    assert _near(_canvas(browser), colour).sum() > 0.9 * lesion.sum()

    # the surfaces arrive after the first render, and the 3D view draws them
    browser.wait_for("window.viewerState.meshesLoaded === true")
    assert browser.evaluate("nv.meshes.length") >= 1
    # the hotspot analyzer's biopsy targets are listed as markers (a button each)
    hotspot = viewer_study["analyzers"].get("hotspot", {})
    targets = (
        (hotspot.get("result") or {}).get("targets", []) if hotspot.get("status") == "ok" else []
    )
    buttons = browser.evaluate("document.querySelectorAll('#markers button').length")
    assert buttons == len(targets)
    browser.evaluate("nv.setSliceType(4); nv.drawScene(); true")
    time.sleep(0.5)
    render = _canvas(browser)
    # shaded, so compared by hue: the direction of the colour, saturated (the render is grey)
    pixels = render.astype(float)
    target = np.asarray(colour, dtype=float)
    cosine = (pixels @ target) / (np.linalg.norm(pixels, axis=2) * np.linalg.norm(target) + 1e-6)
    surface = (cosine > 0.97) & (pixels.max(axis=2) - pixels.min(axis=2) > 60)
    assert surface.sum() > 200, f"no {name} surface in the 3D view"


def test_viewer_without_a_key_asks_for_one(browser: DevTools, secured_views, reported_study):
    base, _ = secured_views
    browser.evaluate("sessionStorage.clear(); true")
    browser.open(f"{base}/studies/{reported_study['study_id']}/viewer")
    browser.wait_for("window.viewerState.error")
    assert "401" in browser.evaluate("window.viewerState.error")
    assert browser.evaluate("getComputedStyle(document.getElementById('keyform')).display") == (
        "block"
    )
    # the volumes behind it refuse without the key
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(
            f"{base}/studies/{reported_study['study_id']}/views/volume/labels.nii.gz"
        )
    assert refused.value.code == 401
