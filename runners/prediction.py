"""What a runner returns for one preprocessed volume (shared by every runner)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class RunnerPrediction:
    """A runner's output on the network grid."""

    probabilities: npt.NDArray[np.float32]
    """(outputs, *spatial) softmax probabilities, or one sigmoid per region for
    ``output_kind == "sigmoid_regions"``."""
    tta_disagreement: npt.NDArray[np.float32] | None = None
    """(*spatial) disagreement between mirror-TTA flips, or None when not computed."""
    logits: npt.NDArray[np.float32] | None = None
    """(outputs, *spatial) the averaged logits the probabilities came from (nnU-Net-style
    export resamples logits, not probabilities), or None when the runner does not keep them."""
