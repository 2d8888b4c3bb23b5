"""The view routes on the real service (in-process ASGI): a phantom study analysed by the
pipeline, once with a display copy kept (``views.display_modalities``) and once without
(a study stored before the feature), answered as a reader would check them."""

from __future__ import annotations

import io
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import imageio_ffmpeg
import nibabel as nib
import numpy as np
import pytest
import trimesh
from PIL import Image

from cerebrascan.inputs.case_folder import modality_path
from cerebrascan.views import palette

MODALITIES = ("t1n", "t1c", "t2w", "t2f")


@pytest.fixture(scope="module")
def displayed_study(asgi_client, phantom_cases: list[Path]) -> Iterator[dict]:
    """The second phantom case analysed with a display copy of t1c kept."""
    import service

    views = service.SETTINGS.views
    saved = list(views.display_modalities)
    views.display_modalities = ["t1c"]
    try:
        case = phantom_cases[1]
        files = {
            m: (f"{m}.nii.gz", modality_path(case, m).read_bytes(), "application/gzip")
            for m in MODALITIES
        }
        response = asgi_client.post("/analyze", files=files)
        assert response.status_code == 200, response.text
        yield response.json()
    finally:
        views.display_modalities = saved


def _png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "no-store, private"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def _refused(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, message


def test_display_copy_is_kept_only_when_asked(asgi_client, displayed_study, reported_study):
    from service import SETTINGS

    kept = SETTINGS.studies_dir / displayed_study["study_id"] / "display_t1c.nii.gz"
    image = nib.load(kept)
    assert image.get_data_dtype() == np.uint8 and image.shape == tuple(
        displayed_study["geometry"]["shape"]
    )
    assert np.allclose(image.affine, displayed_study["geometry"]["affine"])
    assert not list((SETTINGS.studies_dir / reported_study["study_id"]).glob("display_*"))
    index = asgi_client.get(f"/studies/{displayed_study['study_id']}/views/index.json").json()
    assert index["background"] == "t1c" and index["display_contrasts"] == ["t1c"]
    assert set(index["labels_present"]) <= {"NETC", "SNFH", "ET"} and index["labels_present"]


def test_slice_defaults_to_the_largest_tumour_and_shows_the_lesion(asgi_client, displayed_study):
    study_id = displayed_study["study_id"]
    index = asgi_client.get(f"/studies/{study_id}/views/index.json").json()
    picture = _png(asgi_client.get(f"/studies/{study_id}/views/slice.png"))
    same = _png(
        asgi_client.get(
            f"/studies/{study_id}/views/slice.png?plane=axial&index={index['default_index']['axial']}"
        )
    )
    assert np.array_equal(picture, same)
    # labels blended over t1c: pixels near the palette colours, on a grey head
    greenish = (picture[..., 1].astype(int) - picture[..., 2] > 25) & (picture[..., 1] > 60)
    assert greenish.sum() > 100
    outline = _png(
        asgi_client.get(f"/studies/{study_id}/views/slice.png?plane=coronal&style=outline")
    )
    assert (np.abs(outline.astype(int) - palette.rgb_of("SNFH")).sum(axis=2) < 8).sum() > 20
    montage = _png(asgi_client.get(f"/studies/{study_id}/views/montage.png?plane=sagittal&count=6"))
    assert montage.shape[1] >= 3 * 150


def test_a_study_without_display_copy_still_draws_and_says_so(asgi_client, reported_study):
    study_id = reported_study["study_id"]
    picture = _png(asgi_client.get(f"/studies/{study_id}/views/slice.png?plane=sagittal"))
    # labels at full palette colour on the neutral background
    full = sum(
        (np.abs(picture.astype(int) - palette.rgb_of(name)).sum(axis=2) < 6).sum()
        for name in ("NETC", "SNFH", "ET")
    )
    assert full > 100
    _refused(
        asgi_client.get(f"/studies/{study_id}/views/slice.png?background=t1c"),
        404,
        "no display copy of t1c",
        "CEREBRASCAN_VIEWS__DISPLAY_MODALITIES",
    )


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("slice.png?plane=oblique", 400, ("plane 'oblique'", "axial")),
        ("slice.png?index=100000", 400, ("index 100000 is outside",)),
        ("slice.png?index=-1", 400, ("index -1 is outside",)),
        ("slice.png?index=abc", 400, ("index 'abc' is not an integer",)),
        ("slice.png?alpha=2", 400, ("alpha 2.0 is outside 0..1",)),
        ("slice.png?background=pet", 400, ("background 'pet'",)),
        ("slice.png?style=dots", 400, ("style 'dots'",)),
        ("montage.png?count=0", 400, ("count 0 is outside 1..36",)),
        ("mesh.glb?region=brain", 400, ("region 'brain'", "WT")),
        ("mesh.ply", 404, ("mesh format 'ply'",)),
        ("flythrough.mp4?mode=sepia", 400, ("mode 'sepia'",)),
        ("orbit.avi", 404, ("video format 'avi'",)),
        ("volume/t2f.nii.gz", 404, ("no display copy of t2f",)),
    ],
)
def test_bad_view_requests_are_4xx_with_a_message(
    asgi_client, reported_study, query, status, words
):
    _refused(
        asgi_client.get(f"/studies/{reported_study['study_id']}/views/{query}"), status, *words
    )


def test_unknown_or_malformed_study_is_4xx(asgi_client):
    _refused(asgi_client.get(f"/studies/{'0' * 32}/views/slice.png"), 404, "no segmentation")
    _refused(asgi_client.get(f"/studies/{'0' * 32}/views/mesh.stl"), 404, "no segmentation")
    _refused(asgi_client.get("/studies/NOT-AN-ID/views/montage.png"), 400, "32 lowercase hex")
    _refused(asgi_client.get("/studies/NOT-AN-ID/viewer"), 400, "32 lowercase hex")


def test_meshes_of_the_served_study(asgi_client, reported_study, tmp_path: Path):
    study_id = reported_study["study_id"]
    response = asgi_client.get(f"/studies/{study_id}/views/mesh.glb?region=all")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store, private"
    (tmp_path / "all.glb").write_bytes(response.content)
    scene = trimesh.load(tmp_path / "all.glb")
    present = [n for n in ("NETC", "SNFH", "ET") if reported_study["volumes_ml"][n] > 0]
    assert sorted(scene.geometry) == sorted(present)
    wt = asgi_client.get(f"/studies/{study_id}/views/mesh.stl?region=WT")
    assert wt.content[:9] == b"SPACE=RAS"
    (tmp_path / "wt.stl").write_bytes(wt.content)
    mesh = trimesh.load(tmp_path / "wt.stl")
    assert mesh.is_watertight and mesh.volume > 0
    assert abs(mesh.volume / 1000 - reported_study["volumes_ml"]["WT"]) < 0.03 * max(
        reported_study["volumes_ml"]["WT"], 1e-6
    )
    obj = asgi_client.get(f"/studies/{study_id}/views/mesh.obj?region=TC").text
    assert "# SPACE=RAS" in obj and "o TC" in obj


def test_a_study_without_tumour_has_no_mesh_409_but_pictures(asgi_client, reported_study):
    # a stored study whose label map is empty (the store's own writer, as the pipeline does)
    from cerebrascan.store.artefacts import StudyArtefacts
    from service import SETTINGS

    store = StudyArtefacts(SETTINGS.studies_dir)
    labels, affine = store.load_labels(reported_study["study_id"])
    empty_id = "e" * 32
    store.save(empty_id, np.zeros_like(labels), affine, json.dumps({"volumes_ml": {}}))
    _refused(asgi_client.get(f"/studies/{empty_id}/views/mesh.glb"), 409, "no tumour")
    _refused(asgi_client.get(f"/studies/{empty_id}/views/mesh.obj?region=ET"), 409, "ET has no")
    _refused(asgi_client.get(f"/studies/{empty_id}/views/orbit.mp4"), 409, "no tumour")
    assert _png(asgi_client.get(f"/studies/{empty_id}/views/montage.png")).shape[0] > 100
    assert _png(asgi_client.get(f"/studies/{empty_id}/views/slice.png")).shape[0] > 100


def test_videos_are_h264_cached_in_the_study_folder(asgi_client, displayed_study, tmp_path):
    from service import SETTINGS

    study_id = displayed_study["study_id"]
    response = asgi_client.get(f"/studies/{study_id}/views/flythrough.mp4?plane=axial&mode=rgb")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    video = tmp_path / "fly.mp4"
    video.write_bytes(response.content)
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
    shape = displayed_study["geometry"]["shape"]
    assert frames == shape[2]  # axial slices of a near-RAS grid
    probe = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(video)],
        capture_output=True,
        text=True,
    ).stderr
    assert re.search(r"Video: h264 .*yuv420p", probe), probe
    cached = list((SETTINGS.studies_dir / study_id / "views").glob("*flythrough-axial-rgb*"))
    assert len(cached) == 1
    again = asgi_client.get(f"/studies/{study_id}/views/flythrough.mp4?plane=axial&mode=rgb")
    assert again.content == response.content
    orbit = asgi_client.get(f"/studies/{study_id}/views/orbit.gif")
    assert orbit.status_code == 200 and orbit.headers["content-type"] == "image/gif"
    assert Image.open(io.BytesIO(orbit.content)).n_frames > 10


def test_palette_route_exports_each_format(asgi_client):
    assert asgi_client.get("/palette").json()["labels"][0]["name"] == "NETC"
    itk = asgi_client.get("/palette?format=itksnap")
    assert '"ET"' in itk.text and itk.headers["content-type"].startswith("text/plain")
    assert "2 SNFH 60 180 75 255" in asgi_client.get("/palette?format=slicer").text
    assert asgi_client.get("/palette?format=niivue").json()["I"] == [0, 1, 2, 3]
    _refused(asgi_client.get("/palette?format=png"), 400, "format 'png'")


def test_viewer_page_and_its_script_are_served(asgi_client, reported_study):
    study_id = reported_study["study_id"]
    page = asgi_client.get(f"/studies/{study_id}/viewer")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store, private"
    script = re.search(r'<script src="([^"]+)"', page.text).group(1)
    assert script == "../viewer/niivue-0.69.0.umd.js"
    js = asgi_client.get("/studies/viewer/niivue-0.69.0.umd.js")
    assert js.status_code == 200 and b"niivue" in js.content[:2000]
    labels = asgi_client.get(f"/studies/{study_id}/views/volume/labels.nii.gz")
    assert labels.status_code == 200 and labels.headers["cache-control"] == "no-store, private"


def _finished_job(asgi_client, study_id: str, job_id: str) -> dict:
    import time

    deadline = time.monotonic() + 120
    while True:
        status = asgi_client.get(f"/studies/{study_id}/views/jobs/{job_id}")
        assert status.status_code == 200, status.text
        job = status.json()
        if job["status"] in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def test_a_long_view_renders_as_a_job_then_serves_from_the_cache(asgi_client, reported_study):
    """POST a render job, poll it, fetch its result URL (the cached file); a job's bad
    parameters are refused before any work, an empty region fails the job with the 409 the
    GET route answers, and another study's or an unknown job is 404."""
    from service import SETTINGS

    study_id = reported_study["study_id"]
    submitted = asgi_client.post(
        f"/studies/{study_id}/views/jobs",
        json={"view": "mesh", "format": "obj", "query": {"region": "WT"}},
    )
    assert submitted.status_code == 202, submitted.text
    job = _finished_job(asgi_client, study_id, submitted.json()["job_id"])
    assert job["status"] == "done", job
    assert job["result_url"] == f"/studies/{study_id}/views/mesh.obj?region=WT"
    cached = list((SETTINGS.studies_dir / study_id / "views").glob("*mesh-WT.obj"))
    assert len(cached) == 1
    rendered_at = cached[0].stat().st_mtime_ns
    served = asgi_client.get(job["result_url"])
    assert served.status_code == 200 and served.text.startswith("#")
    assert cached[0].stat().st_mtime_ns == rendered_at  # served from the cache, not re-rendered

    _refused(
        asgi_client.post(
            f"/studies/{study_id}/views/jobs",
            json={"view": "flythrough", "format": "mp4", "query": {"mode": "sepia"}},
        ),
        400,
        "mode 'sepia'",
    )
    _refused(
        asgi_client.post(f"/studies/{study_id}/views/jobs", json={"view": "hologram"}),
        422,
        "view",
    )
    _refused(
        asgi_client.post(
            f"/studies/{'0' * 32}/views/jobs", json={"view": "orbit", "format": "mp4"}
        ),
        404,
        "no segmentation",
    )
    _refused(asgi_client.get(f"/studies/{study_id}/views/jobs/{'f' * 32}"), 404, "no render job")
    _refused(
        # another study's id (here: none stored) never reaches the job: the study is unknown
        asgi_client.get(f"/studies/{'0' * 32}/views/jobs/{job['job_id']}"),
        404,
        "no segmentation or record for study",
    )

    # a stored study whose label map is empty: the job fails with the GET route's 409
    from cerebrascan.store.artefacts import StudyArtefacts

    store = StudyArtefacts(SETTINGS.studies_dir)
    labels, affine = store.load_labels(study_id)
    empty_id = "d" * 32
    store.save(empty_id, np.zeros_like(labels), affine, json.dumps({"volumes_ml": {}}))
    failed = asgi_client.post(
        f"/studies/{empty_id}/views/jobs", json={"view": "orbit", "format": "gif"}
    )
    assert failed.status_code == 202, failed.text
    job = _finished_job(asgi_client, empty_id, failed.json()["job_id"])
    assert job["status"] == "failed" and job["error_status"] == 409
    assert "no tumour" in job["error"]
