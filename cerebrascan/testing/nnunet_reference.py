"""nnU-Net's own predictor as a reference (tests and benchmarks): stock, or with fp32 accumulation.

nnU-Net 2.8 accumulates sliding-window logits (and its Gaussian) in float16, even on the CPU;
CerebraScan accumulates in float32. :func:`fp32_accumulation` switches nnU-Net's predictor module
to float32 for the duration of a block, so that parity checks compare the same arithmetic.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def fp32_accumulation() -> Iterator[None]:
    """Within the block, ``nnUNetPredictor`` accumulates logits and the Gaussian in float32."""
    import torch
    from nnunetv2.inference import predict_from_raw_data as predictor_module
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    class _Fp32Torch:
        """``torch`` as the predictor module sees it, with ``torch.half`` meaning float32."""

        half = torch.float32

        def __getattr__(self, name: str) -> Any:
            return getattr(torch, name)

    patched = {
        "torch": _Fp32Torch(),
        "compute_gaussian": functools.partial(compute_gaussian, dtype=torch.float32),
    }
    saved = {name: getattr(predictor_module, name) for name in patched}
    try:
        for name, value in patched.items():
            setattr(predictor_module, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(predictor_module, name, value)
