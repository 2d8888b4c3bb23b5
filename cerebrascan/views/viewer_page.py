"""The viewer page: NiiVue (vendored, ``viewer/``) with the study's label map, surfaces, markers.

The page itself holds no study data and touches no store (it is served without an API key so a
browser can open it); its script fetches everything with the key it was opened with
(``#key=...`` in the URL fragment, which browsers never send, or a form), kept in the tab's
``sessionStorage``. URLs are relative, so the page works under any mount path and offline.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from cerebrascan.views.palette import LABELS, niivue_label_map

VIEWER_DIR = Path(__file__).resolve().parent / "viewer"
NIIVUE_FILE = VIEWER_DIR / "niivue.umd.js"
NIIVUE_VERSION = "0.69.0"
NIIVUE_SHA256 = "47b896b77ec4a5be3ef1949c33ad393b6f45629921f326c279000bcf51bdb4af"
"""SHA-256 of the vendored ``niivue.umd.js`` (``viewer/VERSION``; checked by the tests)."""


@cache
def _template() -> str:
    return (VIEWER_DIR / "viewer.html").read_text(encoding="utf-8")


@cache
def niivue_script() -> bytes:
    """The vendored NiiVue UMD build."""
    return NIIVUE_FILE.read_bytes()


def viewer_html(study_id: str) -> str:
    """The viewer page of ``study_id`` (already validated: 32 lowercase hex characters)."""
    config = {
        "studyId": study_id,
        "resultUrl": f"../{study_id}",
        "indexUrl": "views/index.json",
        "volumeUrl": "views/volume/",
        "meshUrl": "views/mesh.stl",
        "labels": [
            {
                "name": entry.name,
                "label": entry.label,
                "rgb": list(entry.rgb),
                "hex": "#{:02x}{:02x}{:02x}".format(*entry.rgb),
                "description": entry.description,
            }
            for entry in LABELS
        ],
        "niivueLabels": niivue_label_map(),
    }
    # "</" cannot close the script element from inside the JSON
    config_json = json.dumps(config).replace("</", "<\\/")
    return (
        _template()
        .replace("__NIIVUE_URL__", f"../viewer/niivue-{NIIVUE_VERSION}.umd.js")
        .replace("__CONFIG_JSON__", config_json)
    )
