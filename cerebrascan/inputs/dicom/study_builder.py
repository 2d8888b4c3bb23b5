"""A DICOM upload to a :class:`~cerebrascan.inputs.study.Study`: index -> select -> volumes ->
reference grid -> optional brain mask.

Brain extraction and rigid registration are other stages' work; they come in as callables
(``strip_skull``, ``register``) composed by ``service.py``, so this package keeps the import
rules of ``inputs/``. Without ``strip_skull`` a study not declared skull-stripped is refused;
without ``register`` series of different frames of reference are refused, each with a 422 that
says what to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import nibabel as nib
import numpy as np
import numpy.typing as npt
from pydicom.datadict import tag_for_keyword

from cerebrascan.errors import InputError
from cerebrascan.imaging.coregistration import resample_onto
from cerebrascan.imaging.geometry import spacing_from_affine
from cerebrascan.inputs.dicom.deid import Deidentifier
from cerebrascan.inputs.dicom.grid import (
    field_of_view_overlap,
    reorient,
    resample_to_grid,
    same_grid,
)
from cerebrascan.inputs.dicom.index import IndexedSeries, StudyIndex
from cerebrascan.inputs.dicom.selection import Selection, SelectionRule, select_series
from cerebrascan.inputs.dicom.settings import DicomSettings
from cerebrascan.inputs.dicom.volumes import SeriesVolume, build_volume, series_label
from cerebrascan.inputs.study import (
    DICOM_UNTRUSTED_TEXT_TAGS,
    SegmentationSpace,
    Study,
    check_grid,
    check_voxel_values,
    untrusted_text_from_dicom,
)
from schemas.dicom import (
    AtlasNormalisation,
    BrainMaskSummary,
    DicomAnalysis,
    GridSummary,
    RoleOnGrid,
)

logger = logging.getLogger(__name__)

MIN_FIELD_OF_VIEW_OVERLAP = 0.5
"""A series covering less of the reference grid than this is refused (wrong series paired)."""


class RigidRegistration(Protocol):
    """What a ``register`` callable answers (``cerebrascan.imaging.coregistration``)."""

    @property
    def resampled(self) -> npt.NDArray[np.float32]: ...

    @property
    def residual_mm(self) -> float: ...


StripSkull = Callable[[npt.NDArray[np.float32], npt.NDArray[np.float64]], npt.NDArray[np.bool_]]
"""``(data, affine) -> brain mask`` on the same grid (a ``BrainExtractor.mask``)."""
Register = Callable[
    [
        npt.NDArray[np.float32],
        npt.NDArray[np.float64],
        npt.NDArray[np.float32],
        npt.NDArray[np.float64],
    ],
    RigidRegistration,
]
"""``(fixed, fixed_affine, moving, moving_affine) -> RigidRegistration`` (moving resampled
onto the fixed grid)."""


@dataclass(frozen=True)
class AtlasRegistration:
    """The reference grid's rigid registration to an atlas (``normalise_to_atlas``)."""

    shape: tuple[int, int, int]
    """The atlas grid's shape."""
    affine: npt.NDArray[np.float64]
    """The atlas grid's voxel-to-RAS affine."""
    transform: npt.NDArray[np.float64]
    """4x4 RAS matrix: an atlas point -> the same anatomy on the reference grid."""
    residual_mm: float
    rotation_deg: float
    translation_mm: float


NormaliseToAtlas = Callable[[npt.NDArray[np.float32], npt.NDArray[np.float64]], AtlasRegistration]
"""``(brain image, affine) -> AtlasRegistration`` (the SRI24 T1, composed by ``service.py``)."""


@dataclass(frozen=True)
class DicomStudy:
    """What the builder hands the transport: the study and the timings of its stages."""

    study: Study
    timings_ms: dict[str, float]


def _grid_summary(shape: tuple[int, ...], affine: npt.NDArray[np.float64]) -> GridSummary:
    x, y, z = (int(n) for n in shape[:3])
    return GridSummary(
        shape=(x, y, z),
        spacing_mm=tuple(round(s, 4) for s in spacing_from_affine(affine)),  # type: ignore[arg-type]
        orientation="".join(nib.aff2axcodes(affine)),
    )


def source_headers(
    series: IndexedSeries, deidentify: Deidentifier | None = None
) -> tuple[dict[str, Any], ...]:
    """Every instance's header as DICOM JSON (``to_json_dict``), pixel data removed, and
    de-identified (:mod:`.deid`) when ``deidentify`` is given."""
    headers = []
    for instance in series.instances:
        header = instance.header.copy()
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in header:
                del header[keyword]
        if deidentify is not None:
            header = deidentify.dataset(header)
        headers.append(header.to_json_dict(suppress_invalid_tags=True))
    return tuple(headers)


def choose_series(
    index: StudyIndex,
    rules: Sequence[SelectionRule],
    modalities: tuple[str, ...],
    settings: DicomSettings,
    series_map: Mapping[str, str] | None,
) -> Selection:
    """Select the series of every modality, refusing an incomplete or ambiguous selection.

    Raises:
        InputError: 422 listing the problems and candidate SeriesInstanceUIDs (see
            :meth:`.selection.Selection.require_complete`); 400 for a bad ``series_map``.
    """
    selection = select_series(
        index, rules, modalities, series_map=series_map, min_slices=settings.min_slices
    )
    selection.require_complete()
    return selection


def build_study(
    index: StudyIndex,
    selection: Selection,
    modalities: tuple[str, ...],
    settings: DicomSettings,
    *,
    max_voxels: int,
    skull_stripped: bool,
    strip_skull: StripSkull | None = None,
    register: Register | None = None,
    deidentify: Deidentifier | None = None,
    normalise_to_atlas: NormaliseToAtlas | None = None,
) -> DicomStudy:
    """Decode the chosen series, put them on the reference grid and build the study.

    Args:
        index: the upload's series.
        selection: a complete selection (:func:`choose_series`).
        modalities: the served model's modalities, in channel order.
        settings: the ``dicom`` section.
        max_voxels: the most voxels a volume may have.
        skull_stripped: the study is already skull-stripped (no brain extraction).
        strip_skull: brain extraction, or None when none is configured.
        register: rigid registration, or None when none is configured.
        deidentify: the basic-profile de-identification of the kept headers, the answer's
            UIDs and the untrusted text taken from them; None keeps them as sent.
        normalise_to_atlas: rigid registration of the (brain-extracted) t1n, or the
            reference, to an atlas; the study is then segmented on the atlas grid
            (:class:`~cerebrascan.inputs.study.SegmentationSpace`), its labels still returned
            on the reference grid. None: segmented on the reference grid.

    Raises:
        InputError: 422 naming the series and the problem (see :func:`.volumes.build_volume`),
            brain extraction asked for but not configured, different frames of reference
            without registration, a series not covering the reference grid.
    """
    timings: dict[str, float] = {}
    if not skull_stripped and strip_skull is None:
        raise InputError(
            "options.skull_stripped is false (the default for DICOM) but no brain extractor is "
            "configured on this server; send skull-stripped images with "
            '{"skull_stripped": true} or configure brain_extraction',
            field="options",
        )
    reference_role = (
        settings.reference_role if settings.reference_role in modalities else modalities[0]
    )
    reference_series = selection.choices[reference_role].series
    _check_frames_of_reference(selection, modalities, reference_series, settings, register)
    clock = time.perf_counter()
    volumes: dict[str, SeriesVolume] = {}
    for role in modalities:
        volumes[role] = build_volume(
            selection.choices[role].series,
            max_voxels=max_voxels,
            max_gap_ratio=settings.max_slice_gap_ratio,
            tolerance_mm=settings.spacing_tolerance_mm,
        )
    timings["dicom_volumes"] = (time.perf_counter() - clock) * 1000
    clock = time.perf_counter()
    reference = volumes[reference_role]
    ref_data, ref_affine = reorient(reference.data, reference.affine, settings.axis_codes)
    ref_shape = (int(ref_data.shape[0]), int(ref_data.shape[1]), int(ref_data.shape[2]))
    check_grid(ref_shape, ref_affine, field=series_label(reference_series), max_voxels=max_voxels)
    images: dict[str, npt.NDArray[np.float32]] = {reference_role: ref_data}
    roles: dict[str, RoleOnGrid] = {}
    for role in modalities:
        volume = volumes[role]
        series = selection.choices[role].series
        residual: float | None = None
        label = series_label(series)
        if role == reference_role:
            method = "none"
        else:
            same_frame = volume.frame_of_reference_uid == reference.frame_of_reference_uid
            if settings.registration == "always" or not same_frame:
                assert register is not None  # _check_frames_of_reference
                try:
                    registration = register(ref_data, ref_affine, volume.data, volume.affine)
                except (ValueError, RuntimeError) as exc:  # SimpleITK raises RuntimeError
                    raise InputError(
                        f"{role}: rigid registration of {label} onto the reference "
                        f"{series_label(reference_series)} failed ({exc})",
                        field="series",
                    ) from None
                images[role] = np.asarray(registration.resampled, dtype=np.float32)
                residual = float(registration.residual_mm)
                method = "rigid"
            else:
                overlap = field_of_view_overlap(
                    volume.data.shape, volume.affine, ref_shape, ref_affine
                )
                if overlap < MIN_FIELD_OF_VIEW_OVERLAP:
                    raise InputError(
                        f"{role}: {label} covers {overlap:.0%} of the reference grid "
                        f"({series_label(reference_series)}); at least "
                        f"{MIN_FIELD_OF_VIEW_OVERLAP:.0%} is needed",
                        field="series",
                    )
                images[role] = resample_to_grid(volume.data, volume.affine, ref_shape, ref_affine)
                method = (
                    "none"
                    if same_grid(volume.data.shape, volume.affine, ref_shape, ref_affine)
                    else "geometry"
                )
            check_voxel_values(images[role], field=f"{role} on the reference grid")
        roles[role] = RoleOnGrid(
            series_uid=series.series_uid,
            series_number=_series_number(series),
            rule=selection.choices[role].rule,
            source_grid=_grid_summary(volume.data.shape, volume.affine),
            resampling=method,  # type: ignore[arg-type]
            registration_residual_mm=residual,
        )
    timings["dicom_grid"] = (time.perf_counter() - clock) * 1000
    stack = np.stack([images[m] for m in modalities], axis=0)
    if skull_stripped:
        brain = BrainMaskSummary(
            applied=False, reason="options.skull_stripped: the study is taken as skull-stripped"
        )
    else:
        assert strip_skull is not None
        clock = time.perf_counter()
        source_role = "t1n" if "t1n" in modalities else reference_role
        mask = np.asarray(strip_skull(images[source_role], ref_affine), dtype=bool)
        if mask.shape != ref_shape or not mask.any():
            raise InputError(
                f"brain extraction found no brain in {source_role} (mask shape {mask.shape})",
                field=source_role,
            )
        stack = stack * mask[None].astype(np.float32)
        voxel_ml = float(abs(np.linalg.det(ref_affine[:3, :3]))) / 1000.0
        brain = BrainMaskSummary(
            applied=True,
            volume_ml=round(float(mask.sum()) * voxel_ml, 3),
            reason=f"brain extracted from {source_role} on the reference grid",
        )
        timings["brain_extraction"] = (time.perf_counter() - clock) * 1000
    space, atlas = None, None
    if normalise_to_atlas is not None:
        clock = time.perf_counter()
        source_role = "t1n" if "t1n" in modalities else reference_role
        channel = modalities.index(source_role)
        to_atlas = normalise_to_atlas(stack[channel], ref_affine)
        on_atlas = np.stack(
            [
                resample_onto(
                    to_atlas.shape,
                    to_atlas.affine,
                    image,
                    ref_affine,
                    to_atlas.transform,
                )
                for image in stack
            ]
        )
        space = SegmentationSpace(
            images=on_atlas,
            affine=to_atlas.affine,
            study_to_space=np.linalg.inv(to_atlas.transform).astype(np.float64),
        )
        atlas = AtlasNormalisation(
            grid=_grid_summary(to_atlas.shape, to_atlas.affine),
            source_role=source_role,
            registration_residual_mm=round(to_atlas.residual_mm, 3),
            rotation_deg=round(to_atlas.rotation_deg, 3),
            translation_mm=round(to_atlas.translation_mm, 3),
        )
        timings["atlas_normalisation"] = (time.perf_counter() - clock) * 1000
    report = DicomAnalysis(
        study_uid=reference_series.study_uid,
        reference_role=reference_role,
        reference_series_uid=reference_series.series_uid,
        grid=_grid_summary(ref_shape, ref_affine),
        roles=roles,
        brain_mask=brain,
        skipped_files=len(index.skipped),
        atlas=atlas,
    )
    headers = source_headers(reference_series, deidentify)
    text_source = {k: reference_series.attribute(k) for k in DICOM_UNTRUSTED_TEXT_TAGS}
    if deidentify is not None:
        report = deidentify.report(report)
        # the free text left after the profile (it removes the descriptions)
        text_source = {k: _json_text(headers[0], k) for k in DICOM_UNTRUSTED_TEXT_TAGS}
    study = Study(
        images=np.ascontiguousarray(stack, dtype=np.float32),
        affine=ref_affine,
        modalities=tuple(modalities),
        supplied_text=untrusted_text_from_dicom(text_source),
        dicom_source=headers,
        dicom_report=report,
        segmentation_space=space,
    )
    logger.info(
        "DICOM study built on a %s grid from %d series", "x".join(map(str, ref_shape)), len(roles)
    )
    return DicomStudy(study=study, timings_ms=timings)


def _check_frames_of_reference(
    selection: Selection,
    modalities: tuple[str, ...],
    reference_series: IndexedSeries,
    settings: DicomSettings,
    register: Register | None,
) -> None:
    """Refuse, before decoding, series whose coordinates cannot be related to the reference's.

    Raises:
        InputError: 422 naming the series when a frame of reference differs (or registration
            is always asked for) and no registration may run.
    """
    reference_frame = str(reference_series.attribute("FrameOfReferenceUID") or "")
    for role in modalities:
        series = selection.choices[role].series
        if series is reference_series:
            continue
        frame = str(series.attribute("FrameOfReferenceUID") or "")
        needs_registration = settings.registration == "always" or frame != reference_frame
        if needs_registration and (register is None or settings.registration == "never"):
            why = (
                "disabled (dicom.registration=never)"
                if register is not None
                else "not configured on this server"
            )
            raise InputError(
                f"{role}: {series_label(series)} has FrameOfReferenceUID {frame!r}, the "
                f"reference {series_label(reference_series)} has {reference_frame!r}; their "
                f"coordinates cannot be related without a rigid registration, which is {why}",
                field="series",
            )


def _json_text(header: Mapping[str, Any], keyword: str) -> str | None:
    """A text attribute of a DICOM JSON header, or None."""
    values = (header.get(f"{tag_for_keyword(keyword):08X}") or {}).get("Value") or []
    return str(values[0]) if values else None


def _series_number(series: IndexedSeries) -> int | None:
    value = series.attribute("SeriesNumber")
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
