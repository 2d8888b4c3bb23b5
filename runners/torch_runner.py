"""PyTorch runner: the model's safetensors weights on CPU or CUDA, fp32 / fp16 / bf16.

Tiles and their mirror flips go through the network in batches and are accumulated on the
device (:mod:`runners.device_sliding_window`). Reduced precision is torch autocast, checked by
the precision guard when the runner is built; ``torch_compile`` compiles the network once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from runners.errors import RunnerConfigError
from runners.precision_guard import PrecisionDecision, compare_precisions, reference_tile
from runners.settings import RunnerSettings
from runners.torch_network import load_torch_network
from runners.window import DeviceWindow, WindowedRunner
from schemas.model_spec import ModelSpec

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def torch_device(name: str) -> torch.device:
    """The configured device, refused by name if it does not exist here.

    Raises:
        RunnerConfigError: CUDA was asked for but is not available, or the index is too high.
    """
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RunnerConfigError(
                f"runner.device={name!r} but torch {torch.__version__} sees no CUDA device"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RunnerConfigError(
                f"runner.device={name!r} but only {torch.cuda.device_count()} CUDA device(s)"
            )
        # Kernels and allocations that name no device (cuDNN handles, torch.compile's
        # generated code, current_stream()) go to the current device: make it the configured one.
        torch.cuda.set_device(device)
    return device


def configure_cuda_arithmetic(settings: RunnerSettings) -> None:
    """Process-wide cuDNN/cuBLAS switches for the torch engine on CUDA, from settings.

    TF32 is on by default for cuDNN convolutions in torch, so "fp32" would not be fp32 on
    Ampere/Hopper; ``runner.allow_tf32`` decides. ``cudnn.benchmark`` follows
    ``runner.cuda_conv_algo_search`` (EXHAUSTIVE) as the ONNX Runtime CUDA provider does, so
    the benchmark script and serving time the same thing.
    """
    torch.backends.cudnn.allow_tf32 = settings.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = settings.allow_tf32
    torch.backends.cudnn.benchmark = settings.cuda_conv_algo_search == "EXHAUSTIVE"


class TorchSegmentationRunner(WindowedRunner):
    """Runs the network in PyTorch.

    Args:
        model_folder: the model folder (``model_spec.json`` and the safetensors weights).
        spec: the network's preprocessing and output contract; needs ``torch_network``.
        settings: device, precision, compile flag, tile batch size and step, guard bounds.

    Raises:
        RunnerConfigError: the model has no torch description, or the device is unavailable.
    """

    name = "torch"

    def __init__(self, model_folder: Path, spec: ModelSpec, settings: RunnerSettings) -> None:
        if spec.torch_network is None:
            raise RunnerConfigError(
                f"model in {model_folder} has no torch_network in model_spec.json (exported "
                "before the torch engine existed, or a custom nnU-Net trainer); re-export it "
                "or use runner.engine=onnxruntime"
            )
        self.spec = spec
        self.settings = settings
        self.device = torch_device(settings.device)
        if self.device.type == "cuda":
            configure_cuda_arithmetic(settings)
        network = load_torch_network(spec.torch_network, model_folder).to(self.device)
        self.network: torch.nn.Module = network
        self.compiled = False
        if settings.torch_compile:
            self.network = torch.compile(network)  # type: ignore[assignment]
            self.compiled = True
        self.decision = self._choose_precision()
        self.precision = self.decision.used
        self.providers = [f"torch:{self.device}"]
        self._device_window = DeviceWindow(self.device, self._forward_serving)
        logger.info(
            "torch runner ready on %s, precision %s%s",
            self.device,
            self.precision,
            f" ({self.decision.note})" if self.decision.note else "",
        )

    def _forward(self, batch: torch.Tensor, precision: str) -> torch.Tensor:
        with torch.inference_mode():
            if precision in AUTOCAST_DTYPES:
                with torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[precision]):
                    output: torch.Tensor = self.network(batch)
                    return output.float()
            result: torch.Tensor = self.network(batch.float())
            return result

    def _choose_precision(self) -> PrecisionDecision:
        requested = self.settings.precision
        if requested == "fp32":
            return PrecisionDecision("fp32", "fp32")
        tile = torch.from_numpy(reference_tile(self.spec)).to(self.device)
        reference = self._forward(tile, "fp32").cpu().numpy()
        try:
            candidate = self._forward(tile, requested).cpu().numpy()
        except RuntimeError as exc:  # e.g. an op without a reduced-precision kernel on CPU
            return PrecisionDecision(
                requested, "fp32", note=f"{requested} failed on {self.device}: {exc}"[:300]
            )
        return compare_precisions(
            reference,
            candidate,
            self.spec,
            requested=requested,
            min_agreement=self.settings.precision_guard_min_agreement,
            max_probability_difference=self.settings.precision_guard_max_probability_difference,
        )

    def _forward_serving(self, batch: torch.Tensor) -> torch.Tensor:
        """The network on a device batch at the precision the guard chose."""
        return self._forward(batch, self.precision)

    def predict_tiles(self, tiles: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Logits for a batch of tiles ``(B, C, *patch)`` (host arrays in and out)."""
        batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)
        result: npt.NDArray[np.float32] = (
            self._forward(batch, self.precision).cpu().numpy().astype(np.float32)
        )
        return result
