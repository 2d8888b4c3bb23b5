"""ONNX Runtime runner: the default, torch-free way to execute a segmentation network."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from cerebrascan.settings import RunnerSettings
from runners.prediction import RunnerPrediction
from runners.sliding_window import sigmoid, sliding_window_predict, softmax
from schemas.model_spec import ModelSpec

logger = logging.getLogger(__name__)


class RunnerConfigError(RuntimeError):
    """The configured runner cannot be built on this machine (e.g. a missing provider)."""


class OnnxSegmentationRunner:
    """Runs an exported network tile by tile (batched) with ONNX Runtime.

    Args:
        model_path: the ``.onnx`` file; its batch axis must be dynamic.
        spec: the network's preprocessing and output contract.
        settings: providers, threads, tile batch size and step, mirror TTA default.

    Raises:
        RunnerConfigError: a requested execution provider is not available in the installed
            onnxruntime build.
    """

    name = "onnxruntime"

    def __init__(self, model_path: Path, spec: ModelSpec, settings: RunnerSettings) -> None:
        available = ort.get_available_providers()
        missing = [p for p in settings.providers if p not in available]
        if missing:
            raise RunnerConfigError(
                f"execution provider(s) {missing} not available in this onnxruntime build "
                f"(available: {available}); install onnxruntime-gpu or change runner.providers"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=list(settings.providers)
        )
        self.spec = spec
        self.settings = settings
        self.providers: list[str] = list(self.session.get_providers())
        logger.info("ONNX Runtime session ready on %s", self.providers)

    def predict_tiles(self, tiles: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Logits for a batch of tiles ``(B, C, *patch)``."""
        (logits,) = self.session.run(
            [self.spec.output_name], {self.spec.input_name: tiles.astype(np.float32, copy=False)}
        )
        return np.asarray(logits, dtype=np.float32)

    def predict_probabilities(
        self, volume: npt.NDArray[np.float32], *, mirror_tta: bool
    ) -> npt.NDArray[np.float32]:
        """Class probabilities ``(K, *spatial)`` for a preprocessed ``(C, *spatial)`` volume."""
        return self.predict(volume, mirror_tta=mirror_tta).probabilities

    def predict(
        self,
        volume: npt.NDArray[np.float32],
        *,
        mirror_tta: bool,
        tta_disagreement: bool = False,
    ) -> RunnerPrediction:
        """Class probabilities and, with mirror TTA, optionally the flips' disagreement.

        Args:
            volume: preprocessed ``(C, *spatial)`` float32.
            mirror_tta: average the network over every flip of ``spec.mirror_axes``.
            tta_disagreement: also return the per-voxel disagreement between the flips
                (ignored without ``mirror_tta``).

        Raises:
            ValueError: ``volume`` does not have one channel per modality of the network.
        """
        expected = len(self.spec.modalities)
        if volume.ndim != 4 or volume.shape[0] != expected:
            raise ValueError(f"volume must be ({expected}, x, y, z), got shape {volume.shape}")
        output = sliding_window_predict(
            volume,
            self.predict_tiles,
            patch_size=self.spec.patch_size,
            num_classes=self.spec.num_outputs,
            step=self.settings.tile_step,
            batch_size=self.settings.tile_batch_size,
            mirror_axes=self.spec.mirror_axes if mirror_tta else (),
            return_disagreement=tta_disagreement and mirror_tta,
        )
        probabilities = (
            sigmoid(output.logits)
            if self.spec.output_kind == "sigmoid_regions"
            else softmax(output.logits, axis=0)
        )
        return RunnerPrediction(
            probabilities=probabilities,
            tta_disagreement=output.disagreement,
            logits=output.logits,
        )
