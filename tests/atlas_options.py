"""``options.analyzers`` for test posts whose checks do not concern the SRI24 atlas."""

from __future__ import annotations

from typing import Any


def atlas_by_voxel_index(client: Any) -> dict[str, dict[str, str]]:
    """``options.analyzers`` that map the SRI24 atlas by voxel index (``registration:
    never``), for every installed analyzer with the atlas ``registration`` option (nogo,
    hotspot, the classifiers), read from ``GET /plugins``.

    Phantoms lie on the SRI24 grid but not on its anatomy (a moved head, a random warp), so
    ``auto`` registers the atlas to each of them: the slowest step of an analysis, which tests
    of the store, the delta analyzer or the timeline do not check. The analyzers still run.
    """
    listing = client.get("/plugins")
    assert listing.status_code == 200, listing.text
    options = {
        analyzer["name"]: {"registration": "never"}
        for plugin in listing.json()["plugins"]
        for analyzer in plugin["analyzers"]
        if "registration" in ((analyzer["options_schema"] or {}).get("properties") or {})
    }
    assert "nogo" in options, options
    return options
