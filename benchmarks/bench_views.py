"""Study views on a 240x240x155 study: slice, montage, meshes, fly-through, orbit, viewer.

The study is a phantom case (its reference segmentation and t1c as the display copy) stored with
the store's own writers, so no inference runs. Each figure is the median of ``--repeat`` cold
renders (meshes and videos: the cache file removed between runs). The viewer's first render is
measured in Debian's headless Chromium (SwiftShader WebGL): from navigation to the label map
drawn (``viewerState.firstRenderMs`` plus page load), with API keys on.

    python benchmarks/bench_views.py --out benchmarks/results/views_cpu2.json \
        [--screenshots docs/images]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.routing import Mount

from cerebrascan.inputs.case_folder import load_nifti_image, modality_path
from cerebrascan.phantoms.writer import write_cohort
from cerebrascan.serving.apikeys import new_key
from cerebrascan.serving.http.auth import ApiKeyMiddleware
from cerebrascan.serving.http.studies import studies_app
from cerebrascan.serving.http.views import palette_app
from cerebrascan.serving.settings import AuthSettings
from cerebrascan.store.artefacts import StudyArtefacts
from cerebrascan.testing.devtools import headless_chromium, loopback_server
from cerebrascan.views.display import display_copy
from cerebrascan.views.study_views import StudyViews

TARGETS_S = {
    "slice": 0.2,
    "montage": 1.0,
    "meshes_all_formats": 3.0,
    "flythrough_mp4": 10.0,
    "viewer_first_render": 3.0,
}
STUDY_ID = "b" * 32


def _median_s(
    run: Callable[[], object], repeat: int, reset: Callable[[], None] | None = None
) -> float:
    times = []
    for _ in range(repeat):
        if reset is not None:
            reset()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--machine", default=platform.processor() or platform.machine())
    parser.add_argument("--screenshots", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-views-"))
    try:
        case = write_cohort(work / "cases", seed=1717, n_cases=1, prefix="BENCH")[0]
        seg = load_nifti_image(modality_path(case, "seg"))
        labels = np.asarray(seg.dataobj, dtype=np.uint8)
        affine = np.asarray(seg.affine, dtype=np.float64)
        t1c = np.asarray(load_nifti_image(modality_path(case, "t1c")).dataobj, dtype=np.float32)
        store = StudyArtefacts(work / "studies")
        voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000
        volumes = {
            "NETC": float((labels == 1).sum() * voxel_ml),
            "SNFH": float((labels == 2).sum() * voxel_ml),
            "ET": float((labels == 3).sum() * voxel_ml),
        }
        volumes["TC"] = volumes["NETC"] + volumes["ET"]
        volumes["WT"] = volumes["TC"] + volumes["SNFH"]
        store.save(STUDY_ID, labels, affine, json.dumps({"volumes_ml": volumes, "analyzers": {}}))
        store.save_display_image(STUDY_ID, "t1c", display_copy(t1c), affine)
        views = StudyViews(store)
        cache = store.folder(STUDY_ID) / "views"

        def clear_cache() -> None:
            shutil.rmtree(cache, ignore_errors=True)
            views._volumes.clear()

        figures: dict[str, float] = {}
        figures["slice"] = _median_s(
            lambda: views.slice_png(STUDY_ID, "axial", None), args.repeat, views._volumes.clear
        )
        figures["slice_warm"] = _median_s(
            lambda: views.slice_png(STUDY_ID, "coronal", None), args.repeat
        )
        figures["montage"] = _median_s(
            lambda: views.montage_png(STUDY_ID, "axial", 9), args.repeat, views._volumes.clear
        )

        def all_meshes() -> None:
            for mesh_format in ("glb", "stl", "obj"):
                views.mesh(STUDY_ID, "all", mesh_format)

        figures["meshes_all_formats"] = _median_s(all_meshes, args.repeat, clear_cache)
        figures["flythrough_mp4"] = _median_s(
            lambda: views.flythrough(STUDY_ID, "axial", "rgb", "mp4"), args.repeat, clear_cache
        )
        figures["orbit_mp4"] = _median_s(
            lambda: views.orbit(STUDY_ID, "mp4"), args.repeat, clear_cache
        )

        key, entry = new_key("bench", "reader")
        app = Starlette(
            routes=[Mount("/studies", studies_app(store.root)), Mount("/", palette_app())]
        )
        secured = ApiKeyMiddleware(app, AuthSettings(enabled=True, api_keys=[entry]))
        viewer_times = []
        with loopback_server(secured) as base, headless_chromium(1200, 760) as browser:
            for _attempt in range(args.repeat):
                browser.open("about:blank")  # a fresh document each time, not a fragment change
                start = time.perf_counter()
                browser.open(f"{base}/studies/{STUDY_ID}/viewer#key={key}")
                browser.wait_for("window.viewerState.ready || window.viewerState.error")
                viewer_times.append(time.perf_counter() - start)
                error = browser.evaluate("window.viewerState.error")
                if error:
                    raise RuntimeError(f"viewer failed: {error}")
            figures["viewer_first_render"] = statistics.median(viewer_times)
            figures["viewer_first_render_in_page"] = (
                float(browser.evaluate("window.viewerState.firstRenderMs")) / 1000
            )
            browser.wait_for("window.viewerState.meshesLoaded === true")
            if args.screenshots is not None:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                centre = np.argwhere(labels > 0).mean(axis=0)
                centre_mm = (affine[:3, :3] @ centre + affine[:3, 3]).tolist()
                browser.evaluate(
                    f"nv.scene.crosshairPos = nv.mm2frac({json.dumps(centre_mm)});"
                    "nv.setSliceType(3); nv.drawScene(); true"
                )
                time.sleep(1.0)
                Image.fromarray(browser.screenshot()).save(args.screenshots / "viewer.png")
                browser.evaluate("nv.setSliceType(4); nv.drawScene(); true")
                time.sleep(1.0)
                Image.fromarray(browser.element_pixels("gl")).save(
                    args.screenshots / "viewer-3d.png"
                )
        if args.screenshots is not None:
            (args.screenshots / "montage.png").write_bytes(views.montage_png(STUDY_ID, "axial", 9))
        result = {
            "machine": args.machine,
            "note": "2 cores shared with other work while measured: upper bounds",
            "study_shape": list(labels.shape),
            "repeat": args.repeat,
            "seconds": {name: round(value, 3) for name, value in figures.items()},
            "targets_s": TARGETS_S,
            "met": {name: figures[name] <= limit for name, limit in TARGETS_S.items()},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
