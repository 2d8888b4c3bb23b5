"""What a runner is: the one protocol every engine (and the runner service's proxy) satisfies.

Two levels, one protocol family:

- :class:`SegmentationRunner`: a whole preprocessed volume in, probabilities (and logits) out.
  The segmentation step and the pipeline need nothing more, so the front service's proxy of
  the runner service (which never sends tiles across the process boundary) is one too.
- :class:`TileRunner`: a segmentation runner that executes the network in this process and can
  therefore also run a batch of tiles (``predict_tiles``). Every engine built by
  :func:`runners.factory.build_runner` is one; cross-case batching and the precision guard
  need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from runners.precision_guard import PrecisionDecision
from runners.prediction import RunnerPrediction
from schemas.model_spec import ModelSpec

if TYPE_CHECKING:
    from runners.window import DeviceWindow

__all__ = ["SegmentationRunner", "TileRunner"]


class SegmentationRunner(Protocol):
    """Segments one preprocessed volume on the network grid.

    Attributes:
        name: the engine, for responses and logs (``onnxruntime``, ``torch``, ...).
        spec: the network's preprocessing and output contract.
        providers: where the network runs (execution providers or ``torch:<device>``).
        precision: the precision it serves with (after the precision guard).
        decision: what the precision guard decided, and why.
    """

    name: str
    spec: ModelSpec
    providers: list[str]
    precision: str
    decision: PrecisionDecision

    def predict(
        self,
        volume: npt.NDArray[np.float32],
        *,
        mirror_tta: bool,
        tta_disagreement: bool = False,
    ) -> RunnerPrediction:
        """Probabilities of a preprocessed ``(C, *spatial)`` volume on the network grid.

        Args:
            volume: preprocessed ``(C, *spatial)`` float32, one channel per modality.
            mirror_tta: average the network over every flip of ``spec.mirror_axes``.
            tta_disagreement: also return the flips' disagreement (with ``mirror_tta`` only).

        Raises:
            ValueError: ``volume`` does not have one channel per modality of the network.
        """
        ...


class TileRunner(SegmentationRunner, Protocol):
    """A segmentation runner that executes the network here, tile batch by tile batch."""

    def predict_tiles(self, tiles: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Logits ``(B, K, *patch)`` for a batch of tiles ``(B, C, *patch)`` in host memory."""
        ...

    @property
    def device_window(self) -> DeviceWindow | None:
        """The network call on tiles resident on the engine's device, or None (host only).

        The runner service's cross-case window runs on the device when there is one
        (:mod:`runners.device_cross_case`).
        """
        ...
