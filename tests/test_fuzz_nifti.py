"""Property-based fuzzing (hypothesis) of what a client sends before any model runs: the NIfTI
decoder (mutated headers, flipped bytes, truncated data, gzip garbage) and the analyze options
(the ``options`` JSON field, then the pipeline's checks of it).

Every outcome must be a result or the project's :class:`InputError` (a 4xx); any other exception
is a crash that would answer 500. The examples are bounded (a few seconds in all) and derandomised,
so a run is reproducible; ``HYPOTHESIS_PROFILE=fuzz-long`` runs many more by hand.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cerebrascan.errors import InputError
from cerebrascan.inputs.nifti import decode_nifti
from cerebrascan.inputs.study import Study, Volume
from cerebrascan.pipeline import AnalysisPipeline, StudyPlan
from schemas.analysis import AnalyzeOptions
from tests.nifti_faults import brain_like

settings.register_profile(
    "fuzz",
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("fuzz-long", parent=settings.get_profile("fuzz"), max_examples=5000)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "fuzz"))
# enough to decode the small base image, small enough that a mutated shape costs nothing
MAX_VOXELS = 64**3
SHAPE = (10, 9, 8)

# NIfTI-1 header fields: (byte offset, struct format)
NIFTI1_FIELDS: dict[str, tuple[int, str]] = {
    "sizeof_hdr": (0, "<i"),
    **{f"dim{i}": (40 + 2 * i, "<h") for i in range(8)},
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    **{f"pixdim{i}": (76 + 4 * i, "<f") for i in range(8)},
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    **{name: (256 + 4 * i, "<f") for i, name in enumerate(("quatern_b", "quatern_c", "quatern_d"))},
    **{name: (268 + 4 * i, "<f") for i, name in enumerate(("qoffset_x", "qoffset_y", "qoffset_z"))},
    **{f"srow{i}": (280 + 4 * i, "<f") for i in range(12)},
}
# NIfTI-2 header fields: (byte offset, struct format)
NIFTI2_FIELDS: dict[str, tuple[int, str]] = {
    "sizeof_hdr": (0, "<i"),
    "datatype": (12, "<h"),
    "bitpix": (14, "<h"),
    **{f"dim{i}": (16 + 8 * i, "<q") for i in range(8)},
    **{f"pixdim{i}": (104 + 8 * i, "<d") for i in range(8)},
    "vox_offset": (168, "<q"),
    "scl_slope": (176, "<d"),
    "scl_inter": (184, "<d"),
    "qform_code": (344, "<i"),
    "sform_code": (348, "<i"),
    **{f"srow{i}": (400 + 8 * i, "<d") for i in range(12)},
}
DATATYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304]


def _base_image(version: int) -> bytes:
    data = brain_like(SHAPE, seed=7)
    image_class = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    image = image_class(data, np.diag([1.0, 1.2, 1.5, 1.0]))  # type: ignore[no-untyped-call]
    image.header.set_qform(image.affine, code=1)
    image.header.set_sform(image.affine, code=1)
    return bytes(image.to_bytes())


BASES = {1: _base_image(1), 2: _base_image(2)}


def _numbers(fmt: str) -> st.SearchStrategy[Any]:
    """Values of one header field: the interesting ones often, any of its type sometimes."""
    if fmt in ("<f", "<d"):
        special = st.sampled_from([0.0, -0.0, -1.0, 1.0, 1e-30, 1e30, float("inf"), float("nan")])
        floats = st.floats(width=32 if fmt == "<f" else 64, allow_nan=True, allow_infinity=True)
        return st.one_of(special, floats)
    bits = {"<h": 16, "<i": 32, "<q": 64}[fmt]
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    special = st.sampled_from([0, 1, -1, 3, 4, 7, 8, 348, 352, 540, 544, high, low])
    return st.one_of(special, st.sampled_from(DATATYPES), st.integers(low, high))


@st.composite
def _mutated_nifti(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([1, 1, 1, 2]))
    raw = bytearray(BASES[version])
    fields = NIFTI1_FIELDS if version == 1 else NIFTI2_FIELDS
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=4)):
        offset, fmt = fields[name]
        struct.pack_into(fmt, raw, offset, draw(_numbers(fmt)))
    for position, value in draw(
        st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=3)
    ):
        raw[position] = value
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    packing = draw(st.sampled_from(["plain", "gzip", "gzip-truncated", "gzip-garbage", "junk"]))
    if packing == "plain":
        return bytes(raw)
    packed = gzip.compress(bytes(raw), compresslevel=1)
    if packing == "gzip-truncated":
        return packed[: draw(st.integers(0, len(packed) - 1))]
    if packing == "gzip-garbage":
        return packed + draw(st.binary(min_size=1, max_size=64))
    if packing == "junk":  # the gzip magic, then anything
        return b"\x1f\x8b" + draw(st.binary(max_size=600))
    return packed


def _decode(payload: bytes, folder: Path) -> Volume | InputError:
    path = folder / "upload.bin"
    path.write_bytes(payload)
    try:
        # numpy's overflow warnings on absurd scale factors are no failure; the result is checked
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return decode_nifti(path, field="t1c", max_voxels=MAX_VOXELS)
    except InputError as exc:
        return exc


def test_the_unmutated_bases_decode(tmp_path: Path) -> None:
    """The fuzz starts from images the decoder reads (else every example were a refusal)."""
    for version, raw in BASES.items():
        for payload in (raw, gzip.compress(raw)):
            outcome = _decode(payload, tmp_path)
            assert isinstance(outcome, Volume), (version, outcome)
            assert outcome.data.shape == SHAPE


@settings(PROFILE)
@given(payload=_mutated_nifti())
def test_a_mutated_nifti_decodes_or_is_refused_with_an_input_error(
    payload: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outcome = _decode(payload, tmp_path_factory.mktemp("fuzz", numbered=True))
    if isinstance(outcome, InputError):
        assert 400 <= outcome.status_code < 500
        assert outcome.field == "t1c" and str(outcome).startswith("t1c: ")
        return
    # anything accepted is what the pipeline relies on: a finite 3-D float32 grid
    assert outcome.data.dtype == np.float32 and outcome.data.ndim == 3
    assert min(outcome.data.shape) >= 8 and outcome.data.size <= MAX_VOXELS
    assert np.all(np.isfinite(outcome.data)) and np.all(np.isfinite(outcome.affine))
    assert abs(np.linalg.det(outcome.affine[:3, :3])) > 0


@settings(PROFILE)
@given(payload=st.binary(max_size=2048))
def test_random_bytes_are_refused_with_an_input_error(
    payload: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outcome = _decode(payload, tmp_path_factory.mktemp("bytes", numbered=True))
    assert isinstance(outcome, InputError) and outcome.status_code == 400, outcome


# --- the analyze options -------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
OPTION_KEYS = [
    "mirror_tta",
    "analyzers",
    "patient_id",
    "study_date",
    "skull_stripped",
    "comment",
]
ANALYZER_NAMES = ["volumetrics", "quality", "hotspot", "nogo", "delta", "classification", "x"]
# the built-in analyzers' option fields (plugins/builtin/*Options), and one unknown
ANALYZER_FIELDS = [
    "registration",
    "min_ncc",
    "structures",
    "high_risk_mm",
    "moderate_risk_mm",
    "k",
    "min_separation_mm",
    "exclude_structures",
    "brain_ml_warning",
    "brain_ml_error",
    "max_box_fill",
    "midline_x_mm",
    "midline_tolerance_mm",
    "patient_age_years",
    "unknown_field",
]
FIELD_VALUES = st.one_of(
    st.sampled_from(["auto", "always", "never", "brainstem", "", None]),
    st.integers(-5, 50),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
    st.lists(st.floats(allow_nan=False, min_value=-1e4, max_value=1e4), max_size=3),
    st.lists(st.sampled_from(["brainstem", "optic_chiasm", "x", ""]), max_size=3),
    JSON_VALUES,
)


@st.composite
def _option_texts(draw: st.DrawFn) -> str:
    """The ``options`` form field: mostly objects with the schema's keys and odd values, some
    analyzer option objects with odd fields, some text that is not JSON at all."""
    kind = draw(st.sampled_from(["object", "object", "object", "json", "text"]))
    if kind == "text":
        return draw(st.text(max_size=80))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES))
    options: dict[str, Any] = draw(
        st.dictionaries(st.sampled_from(OPTION_KEYS), JSON_VALUES, max_size=4)
    )
    if draw(st.booleans()):
        options["analyzers"] = draw(
            st.dictionaries(
                st.sampled_from(ANALYZER_NAMES),
                st.dictionaries(st.sampled_from(ANALYZER_FIELDS), FIELD_VALUES, max_size=3)
                | st.dictionaries(st.text(max_size=20), JSON_VALUES, max_size=2),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        options["study_date"] = draw(
            st.sampled_from(["2024-02-30", "2024-01-15", "0001-01-01", "9999-12-31", "2024-1-5"])
        )
    if draw(st.booleans()):
        options["patient_id"] = draw(
            st.sampled_from(["PAT-0001", "", " ", "John Smith", "x" * 300, "../../etc", "\x00"])
            | st.text(max_size=40)
        )
    return json.dumps(options)


@pytest.fixture(scope="module")
def planner(registered_default_model: str) -> AnalysisPipeline:
    """The pipeline's checks of a study and its options, without a runner (nothing segments)."""
    from cerebrascan.registry import resolve_model
    from cerebrascan.settings import Settings

    settings_ = Settings()
    return AnalysisPipeline(settings_, resolve_model(settings_), with_runner=False)


@pytest.fixture(scope="module")
def small_study(planner: AnalysisPipeline) -> Study:
    data = brain_like((12, 12, 12), seed=3)
    modalities = tuple(planner.model.spec.modalities)
    return Study(images=np.stack([data] * len(modalities)), affine=np.eye(4), modalities=modalities)


@settings(PROFILE)
@given(text=_option_texts())
def test_options_parse_and_plan_to_a_result_or_an_input_error(
    text: str, planner: AnalysisPipeline, small_study: Study
) -> None:
    """As a request: pydantic parses the field (its ValidationError is BentoML's 400), then
    the pipeline checks analyzer options and the patient id (InputError)."""
    try:
        options = AnalyzeOptions.model_validate_json(text)
    except ValidationError as exc:
        # the message names the field, never the value (a comment may identify someone)
        assert exc.errors()
        return
    try:
        plan = planner.plan(small_study, options, planner.model)
    except InputError as exc:
        assert 400 <= exc.status_code < 500 and exc.field == "options"
        if options.patient_id and len(options.patient_id.strip()) > 3:
            assert options.patient_id not in str(exc)
        return
    assert isinstance(plan, StudyPlan)
    assert set(plan.analyzer_options) == set(options.analyzers)


def test_a_bad_options_field_is_a_400_over_http(asgi_client: Any) -> None:
    """The transport's side of the first step: pydantic's refusal answers 4xx, naming it."""
    files = {
        m: (f"{m}.nii", io.BytesIO(b"x"), "application/octet-stream")
        for m in ("t1n", "t1c", "t2w", "t2f")
    }
    response = asgi_client.post("/analyze", files=files, data={"options": '{"mirror_tta": [1]'})
    assert response.status_code == 400, response.text
    assert "options" in response.text


@pytest.mark.parametrize("route", ["/analyze", "/analyze/dicom", "/dicom/inspect"])
def test_a_body_that_is_not_multipart_is_a_400_naming_it(asgi_client: Any, route: str) -> None:
    """Found by tests/test_fuzz_api.py: starlette's own 400 for a malformed multipart body
    became BentoML's 500."""
    boundary = "a222103b9b30b1f9e8be6882ecedb1d2"
    response = asgi_client.post(
        route,
        content=f"--{boundary}\r\n[]--{boundary}--\r\n".encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 400, response.text
    assert "not valid multipart/form-data" in response.text
