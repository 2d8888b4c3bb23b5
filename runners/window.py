"""One runner ``predict()`` for every engine: the windowing around the network call.

As MONAI's inferers separate the sliding window from the network, an engine here supplies only
its network call: ``predict_tiles`` on a host batch of tiles and, where it has one, a
:class:`DeviceWindow` (its call on tiles that already live on a device). :func:`predict_volume`
does the rest, identically for ONNX Runtime, OpenVINO, torch and TensorRT:

1. checks the volume has one channel per modality of the network;
2. chooses the window: on the device when the engine has one, on the host when the mirror
   flips' disagreement is asked for (it needs every flip's logits per tile, which only the
   host window keeps) or when the engine has no device window;
3. mirror TTA over ``spec.mirror_axes``;
4. the activation ``spec.output_kind`` names (softmax, or one sigmoid per region), the
   averaged logits kept beside it (nnU-Net-style export resamples logits).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from runners.errors import EngineOutputError
from runners.prediction import RunnerPrediction
from runners.settings import RunnerSettings
from runners.sliding_window import activate, sliding_window_predict
from schemas.model_spec import ModelSpec

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceWindow", "WindowedRunner", "check_volume", "mirror_axes_for", "predict_volume"]

HostTilePredictor = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]
"""An engine's network call on host tiles: ``(B, C, *patch)`` to ``(B, K, *patch)`` logits."""


@dataclass(frozen=True)
class DeviceWindow:
    """An engine's network call on tiles resident on ``device`` (torch tensors).

    Attributes:
        device: where the volume, tiles and accumulators live.
        predict: maps a contiguous ``(B, C, *patch)`` tensor on ``device`` to ``(B, K, *patch)``
            logits there (see :data:`runners.device_sliding_window.BatchPredictor`).
    """

    device: torch.device
    predict: Callable[[torch.Tensor], torch.Tensor]


def check_volume(volume: npt.NDArray[np.float32], spec: ModelSpec) -> None:
    """Refuse a volume that is not ``(len(spec.modalities), x, y, z)``.

    Raises:
        ValueError: the volume is not 4-d or its channels are not the network's modalities.
    """
    expected = len(spec.modalities)
    if volume.ndim != 4 or volume.shape[0] != expected:
        raise ValueError(f"volume must be ({expected}, x, y, z), got shape {volume.shape}")


def mirror_axes_for(spec: ModelSpec, mirror_tta: bool) -> tuple[int, ...]:
    """The spatial axes to mirror: the network's ``mirror_axes`` with TTA, none without."""
    return tuple(spec.mirror_axes) if mirror_tta else ()


def predict_volume(
    volume: npt.NDArray[np.float32],
    spec: ModelSpec,
    predict_tiles: HostTilePredictor,
    *,
    device_window: DeviceWindow | None,
    step: float,
    batch_size: int,
    mirror_tta: bool,
    tta_disagreement: bool = False,
) -> RunnerPrediction:
    """Probabilities, logits and optionally the flips' disagreement of one preprocessed volume.

    Args:
        volume: preprocessed ``(C, *spatial)`` float32 on the network grid.
        spec: the network's contract (patch, modalities, outputs, mirror axes, output kind).
        predict_tiles: the engine's network call on a host batch of tiles.
        device_window: the engine's network call on device tiles, or None for the host window.
        step: tile step as a fraction of the patch (``runner.tile_step``).
        batch_size: tile images per network call (``runner.tile_batch_size``).
        mirror_tta: average the network over every flip of ``spec.mirror_axes``.
        tta_disagreement: also return the per-voxel disagreement between the flips (ignored
            without ``mirror_tta``; computed by the host window).

    Returns:
        The :class:`RunnerPrediction`: probabilities, logits, and the disagreement when asked.

    Raises:
        ValueError: ``volume`` does not have one channel per modality of the network, or the
            network returned a batch of the wrong shape.
        EngineOutputError: the network returned NaN or infinite logits.
    """
    check_volume(volume, spec)
    mirror_axes = mirror_axes_for(spec, mirror_tta)
    with_disagreement = tta_disagreement and mirror_tta
    disagreement = None
    if device_window is not None and not with_disagreement:
        # torch is imported only by engines that have a device window
        from runners.device_sliding_window import device_sliding_window_logits

        logits = device_sliding_window_logits(
            volume,
            device_window.predict,
            device=device_window.device,
            patch_size=spec.patch_size,
            num_classes=spec.num_outputs,
            step=step,
            batch_size=batch_size,
            mirror_axes=mirror_axes,
        )
    else:
        output = sliding_window_predict(
            volume,
            predict_tiles,
            patch_size=spec.patch_size,
            num_classes=spec.num_outputs,
            step=step,
            batch_size=batch_size,
            mirror_axes=mirror_axes,
            return_disagreement=with_disagreement,
        )
        logits, disagreement = output.logits, output.disagreement
    if not np.isfinite(logits).all():
        raise EngineOutputError(
            f"the network returned {int(np.size(logits) - np.isfinite(logits).sum())} "
            "non-finite logits (NaN or inf); refusing to turn them into labels"
        )
    return RunnerPrediction(
        probabilities=activate(logits, spec.output_kind),
        tta_disagreement=disagreement,
        logits=logits,
    )


class WindowedRunner(ABC):
    """The one ``predict`` every engine inherits; an engine supplies only its network call.

    Attributes (set by the engine):
        spec: the network's contract.
        settings: the runner section (``tile_step``, ``tile_batch_size``).
        _device_window: the engine's call on device-resident tiles, or None (host tiles only).
    """

    spec: ModelSpec
    settings: RunnerSettings
    _device_window: DeviceWindow | None

    @abstractmethod
    def predict_tiles(self, tiles: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Logits ``(B, K, *patch)`` for a batch of host tiles ``(B, C, *patch)``."""

    @property
    def device_window(self) -> DeviceWindow | None:
        """The engine's network call on device-resident tiles, or None (host tiles only)."""
        return self._device_window

    def predict(
        self,
        volume: npt.NDArray[np.float32],
        *,
        mirror_tta: bool,
        tta_disagreement: bool = False,
    ) -> RunnerPrediction:
        """Class probabilities and, with mirror TTA, optionally the flips' disagreement.

        The window runs on the engine's device when it has one, and on the host when the
        disagreement is asked for (:func:`predict_volume`).

        Args:
            volume: preprocessed ``(C, *spatial)`` float32.
            mirror_tta: average the network over every flip of ``spec.mirror_axes``.
            tta_disagreement: also return the per-voxel disagreement between the flips
                (ignored without ``mirror_tta``).

        Raises:
            ValueError: ``volume`` does not have one channel per modality of the network.
        """
        return predict_volume(
            volume,
            self.spec,
            self.predict_tiles,
            device_window=self._device_window,
            step=self.settings.tile_step,
            batch_size=self.settings.tile_batch_size,
            mirror_tta=mirror_tta,
            tta_disagreement=tta_disagreement,
        )
