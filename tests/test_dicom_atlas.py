"""Optional SRI24 normalisation of a DICOM study (``dicom.normalise_to_atlas``, issue 16 item 4).

The phantom study (tests/conftest.py ``dicom_phantom``, taken as skull-stripped) is registered
rigidly to the SRI24 T1 and segmented on the atlas grid; the labels must still come back on the
reference series' grid, with the whole tumour within 7 % of the truth, and the answer reports
the registration. The analysis is shared with tests/test_dicom_deid.py (the study is also
de-identified, which changes no voxel).
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture(scope="module")
def atlas_answer(deidentified_atlas_study) -> dict:
    """The phantom analysed in SRI24 space (and de-identified: one analysis for both modules,
    tests/conftest.py)."""
    answer: dict = deidentified_atlas_study[0]
    return answer


def test_segmented_in_sri24_and_returned_on_the_reference_grid(
    asgi_client, atlas_answer, dicom_phantom
) -> None:
    truth = dicom_phantom.truth_volumes_ml["WT"]
    assert abs(atlas_answer["volumes_ml"]["WT"] - truth) / truth < 0.07
    section = atlas_answer["dicom"]
    atlas = section["atlas"]
    assert atlas["atlas"] == "SRI24" and atlas["source_role"] == "t1n"
    assert atlas["grid"]["shape"] == [240, 240, 155]
    assert 0 <= atlas["registration_residual_mm"] < 2.0
    assert atlas_answer["timings_ms"]["atlas_normalisation"] > 0
    assert atlas_answer["timings_ms"]["space_to_study"] > 0
    labels = asgi_client.get(atlas_answer["segmentation_url"])
    assert labels.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(labels.content))
    assert list(image.shape) == section["grid"]["shape"] != [240, 240, 155]
    assert np.allclose(image.affine, np.asarray(atlas_answer["geometry"]["affine"]), atol=1e-4)
    spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
    assert np.allclose(spacing, section["grid"]["spacing_mm"], atol=1e-3)
