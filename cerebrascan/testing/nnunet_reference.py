"""nnU-Net's own predictor as a reference (tests and benchmarks): stock, or with fp32 accumulation.

nnU-Net 2.8 accumulates sliding-window logits (and its Gaussian) in float16, even on the CPU;
CerebraScan accumulates in float32. :func:`fp32_accumulation` switches nnU-Net's predictor module
to float32 for the duration of a block, so that parity checks compare the same arithmetic.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def quiet_predictor(
    model_folder: Path,
    folds: tuple[int, ...],
    *,
    mirroring: bool,
    tile_step: float = 0.5,
    device: str = "cpu",
) -> Any:
    """nnU-Net's ``nnUNetPredictor`` on a trained model folder, Gaussian-weighted, without
    progress bars or prints; everything on the device only for CUDA (nnU-Net refuses it on CPU).

    Args:
        model_folder: the ``<trainer>__<plans>__<configuration>`` folder.
        folds: the folds to load (their predictions are averaged).
        mirroring: nnU-Net's mirror test-time augmentation.
        tile_step: ``tile_step_size``, the sliding window's step as a fraction of the patch.
        device: a torch device name (``cpu``, ``cuda``, ``cuda:N``).
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch_device = torch.device(device)
    predictor = nnUNetPredictor(
        tile_step_size=tile_step,
        use_gaussian=True,
        use_mirroring=mirroring,
        perform_everything_on_device=torch_device.type == "cuda",
        device=torch_device,
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=folds)
    return predictor


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
