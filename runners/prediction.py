"""What a runner returns for one preprocessed volume (shared by every runner)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class RunnerPrediction:
    """A runner's output on the network grid."""

    probabilities: npt.NDArray[np.float32]
    """(classes, *spatial) softmax probabilities."""
    tta_disagreement: npt.NDArray[np.float32] | None = None
    """(*spatial) disagreement between mirror-TTA flips, or None when not computed."""
