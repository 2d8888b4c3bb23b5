"""Brain masks of skull-on MR volumes with deepbet's two networks on ONNX Runtime.

:class:`BrainExtractor` holds the two ONNX Runtime sessions (built once from
:class:`~cerebrascan.brain_extraction.settings.BrainExtractionSettings`: the only file I/O here)
and chains deepbet's steps (:mod:`cerebrascan.brain_extraction.deepbet_maths`) around them.
The volume is brought to the closest RAS orientation by flips and axis swaps (what deepbet's
``nib.as_closest_canonical`` does) and the mask is brought back, so any orientation of the input
gives the mask on the input's own grid.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from nibabel import orientations

from cerebrascan.brain_extraction import deepbet_maths as maths
from cerebrascan.brain_extraction.settings import BrainExtractionSettings
from cerebrascan.errors import InputError

logger = logging.getLogger(__name__)

_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=np.float64)
_INPUT = "image"


class BrainExtractor:
    """deepbet (Fisch et al. 2024, MIT) exported to ONNX: a bool brain mask of a 3D MR volume.

    Args:
        box_session: the first network (brain box on a 128^3 copy), logits output.
        brain_session: the second network (brain mask inside the box), logits output.
        threshold: brain probability above which a voxel is brain.
        input_size: edge of the cube the box is resized to for the second network.

    Raises:
        ValueError: ``input_size`` is not a positive multiple of 32.
    """

    def __init__(
        self,
        box_session: ort.InferenceSession,
        brain_session: ort.InferenceSession,
        *,
        threshold: float = 0.5,
        input_size: int = 256,
    ) -> None:
        if input_size < 32 or input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {input_size}")
        self._box_session = box_session
        self._brain_session = brain_session
        self._logit_threshold = maths.logit_threshold(threshold)
        self.input_size = input_size

    @classmethod
    def from_settings(cls, settings: BrainExtractionSettings) -> BrainExtractor:
        """Build both sessions from the ``brain_extraction`` settings section.

        Raises:
            FileNotFoundError: a model file is missing (the message names it and the fix).
            ValueError: a configured execution provider is not in this onnxruntime build.
        """
        available = ort.get_available_providers()
        missing = [p for p in settings.providers if p not in available]
        if missing:
            raise ValueError(
                f"brain_extraction.providers {missing} not available in this onnxruntime build "
                f"(available: {available})"
            )
        sessions = [
            _session(path, settings) for path in (settings.bbox_model_path, settings.model_path)
        ]
        return cls(
            sessions[0],
            sessions[1],
            threshold=settings.threshold,
            input_size=settings.input_size,
        )

    def mask(self, data: npt.NDArray[Any], affine: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Brain mask of one volume on its own grid.

        Args:
            data: 3D intensities ``(x, y, z)`` (any real dtype; NaN counts as 0), skull on.
            affine: its 4x4 voxel-to-RAS affine (mm); only its orientation is used.

        Returns:
            bool array of ``data``'s shape, True inside the brain.

        Raises:
            ValueError: ``data`` is not 3D or ``affine`` not a finite invertible 4x4 matrix.
            InputError: (422) the image has no intensity range or no brain was found in it.
        """
        volume = np.asarray(data)
        matrix = np.asarray(affine, dtype=np.float64)
        if volume.ndim != 3 or min(volume.shape) < 2:
            raise ValueError(f"data must be a 3D volume, got shape {volume.shape}")
        if (
            matrix.shape != (4, 4)
            or not np.isfinite(matrix).all()
            or abs(np.linalg.det(matrix[:3, :3])) < 1e-9
        ):
            raise ValueError(f"affine must be a finite invertible 4x4 matrix, got {matrix!r}")
        start = time.perf_counter()
        to_ras = orientations.ornt_transform(orientations.io_orientation(matrix), _RAS)
        canonical = orientations.apply_orientation(
            np.nan_to_num(volume.astype(np.float32, copy=False)), to_ras
        )
        try:
            brain = self._canonical_mask(np.ascontiguousarray(canonical, dtype=np.float32))
        except maths.NoBrainError as exc:
            raise InputError(f"brain extraction failed: {exc}") from exc
        from_ras = orientations.ornt_transform(_RAS, orientations.io_orientation(matrix))
        result: npt.NDArray[np.bool_] = np.ascontiguousarray(
            orientations.apply_orientation(brain, from_ras)
        )
        logger.info(
            "brain mask of a %s volume: %d voxels in %.2f s",
            "x".join(str(n) for n in volume.shape),
            int(result.sum()),
            time.perf_counter() - start,
        )
        return result

    def _canonical_mask(self, volume: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        shape = (volume.shape[0], volume.shape[1], volume.shape[2])
        coarse = maths.resize_nearest(volume, (maths.COARSE_SIZE,) * 3)
        low, high = maths.quantile_window(coarse)
        box_logits = self._run(self._box_session, maths.normalise(coarse, low, high))
        coarse_brain = maths.largest_component(maths.brain_logit_margin(box_logits) > 0.0)
        box = maths.brain_box(coarse_brain, shape)
        cropped = volume[box]
        resized = maths.resize_nearest(cropped, (self.input_size,) * 3)
        brain_logits = self._run(self._brain_session, maths.normalise(resized, low, high))
        margin = maths.resize_nearest(
            maths.brain_logit_margin(brain_logits),
            (cropped.shape[0], cropped.shape[1], cropped.shape[2]),
        )
        inside = maths.fill_holes(maths.largest_component(margin > self._logit_threshold))
        brain = np.zeros(shape, dtype=bool)
        brain[box] = inside
        return brain

    @staticmethod
    def _run(
        session: ort.InferenceSession, volume: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        outputs = session.run(None, {_INPUT: maths.as_network_input(volume)})
        logits: npt.NDArray[np.float32] = np.asarray(outputs[0], dtype=np.float32)
        return logits


def _session(path: Path, settings: BrainExtractionSettings) -> ort.InferenceSession:
    if not path.is_file():
        raise FileNotFoundError(
            f"brain-extraction model {path} not found; it is committed in models/brain_extraction "
            "(`make brain-extraction-model` re-exports it from the deepbet wheel)"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # one call per DICOM study: without the arena the ~0.7 GB of 256^3 activations go back to
    # the system after each mask instead of staying with the process (same speed, measured)
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), sess_options=options, providers=settings.providers)
