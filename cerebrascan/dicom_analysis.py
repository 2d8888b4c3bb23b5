"""A DICOM study's whole analysis: the one path of ``POST /analyze/dicom`` and the PACS listener.

Both transports hand their files here: index, series selection, volumes, co-registration, brain
extraction, de-identification and the optional SRI24 normalisation
(:func:`~cerebrascan.inputs.dicom.upload.read_dicom_study`), then segmentation, analyzers and
the store (:meth:`~cerebrascan.pipeline.AnalysisPipeline.run`) — with the model read once when
the study starts. Only the options, the deadline and the tenant differ between them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cerebrascan.atlas.files import load_sri24_t1
from cerebrascan.imaging.coregistration import register_rigid
from cerebrascan.inputs.dicom.deid import deidentifier_for
from cerebrascan.inputs.dicom.selection import SelectionRule
from cerebrascan.inputs.dicom.study_builder import AtlasRegistration, Register, StripSkull
from cerebrascan.inputs.dicom.upload import read_dicom_study
from cerebrascan.pipeline import AnalysisPipeline, StudyAnalysis
from cerebrascan.store.models import DEFAULT_TENANT
from schemas.analysis import AnalyzeOptions


def register_to_sri24(
    image: npt.NDArray[np.float32], affine: npt.NDArray[np.float64]
) -> AtlasRegistration:
    """A brain image's rigid registration to the SRI24 T1 (``dicom.normalise_to_atlas``)."""
    atlas, atlas_affine = load_sri24_t1()
    registration = register_rigid(atlas, atlas_affine, image, affine)
    x, y, z = atlas.shape
    return AtlasRegistration(
        shape=(int(x), int(y), int(z)),
        affine=atlas_affine,
        transform=registration.transform,
        residual_mm=registration.residual_mm,
        rotation_deg=registration.rotation_deg,
        translation_mm=registration.translation_mm,
    )


@dataclass(frozen=True)
class DicomAnalysis:
    """What a DICOM analysis needs beside its files.

    Attributes:
        pipeline: the analysis pipeline (its settings give ``dicom``, ``limits`` and the
            patient-id key that de-identification is keyed with).
        rules: the series selection rules (``dicom.rules_file``, read once at start).
        strip_skull: brain extraction, or None when none is configured (then studies must be
            skull-stripped).
        register: rigid registration of series without a shared frame of reference.
    """

    pipeline: AnalysisPipeline
    rules: Sequence[SelectionRule]
    strip_skull: StripSkull | None
    register: Register | None = register_rigid

    def run(
        self,
        archive: Path | None,
        files: Sequence[tuple[str, Path]],
        options: AnalyzeOptions,
        *,
        series_map: Mapping[str, str] | None = None,
        deadline: float | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> StudyAnalysis:
        """Analyse one uploaded or received study and store it.

        Args:
            archive: a zip of the study, or None.
            files: ``(name, path)`` of loose instance files.
            options: the request's options (``skull_stripped``, ``deidentify``, analyzers).
            series_map: contrast -> SeriesInstanceUID chosen by the caller.
            deadline: the whole request's deadline (``time.monotonic()`` seconds).
            tenant: the tenant the study is stored for.

        Raises:
            InputError: the study is refused (archive, selection, geometry, decoding, options).
        """
        settings = self.pipeline.settings
        key = settings.patient_id_key
        with self.pipeline.serving_for_study() as serving:
            model, _ = serving
            built = read_dicom_study(
                archive,
                files,
                tuple(model.spec.modalities),
                settings.dicom,
                max_voxels=settings.limits.max_voxels,
                skull_stripped=bool(options.skull_stripped),
                rules=self.rules,
                series_map=series_map,
                strip_skull=self.strip_skull,
                register=self.register,
                deidentify=deidentifier_for(
                    options.deidentify,
                    settings.dicom.deidentify,
                    key.get_secret_value() if key is not None else None,
                    settings.dicom.deidentify_uid_root,
                ),
                normalise_to_atlas=register_to_sri24 if settings.dicom.normalise_to_atlas else None,
            )
            return self.pipeline.run(
                built.study,
                options,
                serving=serving,
                input_timings_ms=built.timings_ms,
                deadline=deadline,
                tenant=tenant,
            )
