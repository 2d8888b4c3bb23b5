"""The example plugin tested the way docs/plugins.md recommends: a host built directly."""

from __future__ import annotations

import numpy as np
import pytest
from cerebrascan_example_plugin import plugin

from plugins.host import AnalyzerHost
from plugins.settings import PluginSettings
from plugins.testing import MemoryArtefactSink, study_inputs


def test_edema_index_from_volumetrics_and_mask_artefact() -> None:
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:6, 2:6, 2:6] = 1  # 64 voxels of NETC
    labels[10:18, 10:18, 10:12] = 2  # 128 voxels of SNFH
    # entry_points=False: test this checkout of the plugin, not an installed copy
    host = AnalyzerHost(PluginSettings(entry_points=False), extra_plugins={"edema_index": plugin})
    sink = MemoryArtefactSink(shape=labels.shape)
    outcomes = host.run(
        study_inputs(labels),
        artefacts=sink,
        options={"edema_index": {"write_mask": True}},
    )
    outcome = outcomes["edema_index"]
    assert outcome.status == "ok", outcome.error
    assert outcome.result is not None
    assert outcome.result["edema_index"] == pytest.approx(2.0)
    assert outcome.result["category"] == "moderate"
    assert sink.arrays["edema_index_snfh"].sum() == 128
