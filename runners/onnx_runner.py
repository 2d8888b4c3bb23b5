"""ONNX Runtime runner: the default, torch-free way to execute a segmentation network.

Execution providers come from settings, in order of preference:

- ``CPUExecutionProvider``: tiles are cut and accumulated in host memory (numpy).
- ``CUDAExecutionProvider``: the volume is copied to the GPU once; tiles, flips and the
  Gaussian accumulation stay there and the network is called through IO binding on the
  tensors' addresses, so nothing returns to the host between tiles (needs torch for the device
  arrays; without it the host path is used and a warning says so). cuDNN's convolution search,
  TF32 and the memory arena come from settings (``runner.cuda_*``).
- ``TensorrtExecutionProvider``: as CUDA, plus fp16 (``runner.precision``), an engine cache and a
  timing cache keyed by network, precision, profile and ORT build (:mod:`runners.engine_cache`),
  and one optimisation profile covering every tile batch the sliding window sends. An fp16
  engine is checked against fp32 on a reference tile when built (:mod:`runners.precision_guard`)
  and rebuilt in fp32 if they disagree.

ONNX Runtime falls back to the CPU, with only a log line, when a GPU provider fails to
initialise (a missing CUDA, cuDNN or TensorRT library): the session's active providers are
compared with the configured ones and a fallback stops the start (:func:`check_active_providers`).
CUDA, cuDNN and TensorRT libraries from the pip wheels are preloaded (:mod:`runners.gpu_setup`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from runners.engine_cache import engine_cache_key, file_digest, tile_profile, timing_cache_key
from runners.errors import RunnerConfigError
from runners.fp32_reference import guard_reduced_precision
from runners.gpu_setup import (
    UNKNOWN_GPU,
    gpu_identity,
    preload_cuda_libraries,
    preload_tensorrt_libraries,
)
from runners.precision_guard import PrecisionDecision
from runners.settings import RunnerSettings
from runners.window import DeviceWindow, WindowedRunner
from schemas.model_spec import ModelSpec

if TYPE_CHECKING:
    import torch

__all__ = [
    "OnnxSegmentationRunner",
    "RunnerConfigError",
    "check_active_providers",
    "provider_options",
]

logger = logging.getLogger(__name__)

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
TENSORRT = "TensorrtExecutionProvider"


def check_active_providers(configured: list[str], active: list[str]) -> None:
    """Refuse a session that silently fell back from the configured first provider.

    ONNX Runtime's Python API logs a provider's failure to initialise and goes on with the
    next one (in the end the CPU), so a GPU deployment would serve from the CPU while its
    settings say CUDA.

    Args:
        configured: ``runner.providers``, in order of preference.
        active: ``session.get_providers()`` of the built session.

    Raises:
        RunnerConfigError: the first configured provider is not the session's first provider.
    """
    if not active or active[0] != configured[0]:
        raise RunnerConfigError(
            f"runner.providers asks for {configured[0]} first, but ONNX Runtime runs on "
            f"{active[:1] or 'nothing'} (the provider failed to initialise: a missing CUDA, "
            "cuDNN or TensorRT library, or a driver too old for the build; ONNX Runtime's log "
            "above names it). Fix the installation or list the provider that works first."
        )


def provider_options(
    spec: ModelSpec,
    settings: RunnerSettings,
    *,
    onnx_sha256: str,
    engine_cache_dir: Path | None,
    precision: str,
    gpu: tuple[str, str] = ("unknown", "unknown"),
) -> list[tuple[str, dict[str, Any]]]:
    """ONNX Runtime ``providers`` argument for the configured execution providers.

    Args:
        spec: the network (input name, channels, patch, mirror axes for the profile).
        settings: providers, device, tile batch size.
        onnx_sha256: digest of the ONNX file (part of the engine cache key).
        engine_cache_dir: root of the TensorRT engine and timing caches.
        precision: ``fp32`` or ``fp16`` (TensorRT EP only).
        gpu: GPU name and compute capability, for the cache key.

    Raises:
        RunnerConfigError: the TensorRT EP without a cache folder, or reduced precision asked of
            a provider that cannot provide it.
    """
    device_id = int(settings.device.split(":")[1]) if ":" in settings.device else 0
    if precision != "fp32" and (precision != "fp16" or TENSORRT not in settings.providers):
        raise RunnerConfigError(
            f"runner.precision={precision!r} with onnxruntime needs "
            f"{TENSORRT} and fp16 (providers: {settings.providers}); use precision fp32, or "
            "engine torch / tensorrt"
        )
    result: list[tuple[str, dict[str, Any]]] = []
    for provider in settings.providers:
        if provider == TENSORRT:
            if engine_cache_dir is None:
                raise RunnerConfigError(f"{TENSORRT} needs an engine cache folder")
            profile = tile_profile(spec, settings.tile_batch_size)
            key = engine_cache_key(
                onnx_sha256=onnx_sha256,
                precision=precision,
                profile=profile,
                gpu_name=gpu[0],
                compute_capability=gpu[1],
                backend="onnxruntime-trt-ep",
                backend_version=ort.__version__,
            )
            timing = timing_cache_key(
                gpu_name=gpu[0], compute_capability=gpu[1], backend_version=ort.__version__
            )
            # An engine built for another GPU model must never be loaded: without the GPU's
            # identity in the key the cache is off (each start builds the engine).
            known_gpu = gpu != UNKNOWN_GPU
            result.append(
                (
                    provider,
                    {
                        "device_id": device_id,
                        "trt_fp16_enable": precision == "fp16",
                        "trt_engine_cache_enable": known_gpu,
                        "trt_engine_cache_path": str(engine_cache_dir / "ort-trt" / key),
                        "trt_timing_cache_enable": known_gpu,
                        "trt_timing_cache_path": str(engine_cache_dir / "ort-trt-timing" / timing),
                        "trt_profile_min_shapes": profile.ort_option(profile.min_batch),
                        "trt_profile_opt_shapes": profile.ort_option(profile.opt_batch),
                        "trt_profile_max_shapes": profile.ort_option(profile.max_batch),
                    },
                )
            )
        elif provider == "CUDAExecutionProvider":
            cuda: dict[str, Any] = {
                "device_id": device_id,
                # EXHAUSTIVE (ORT's default) benchmarks every algorithm again for each new
                # input shape; the last batch of a volume is smaller, so it re-searches per case.
                "cudnn_conv_algo_search": settings.cuda_conv_algo_search,
                "use_tf32": int(settings.allow_tf32),
                "arena_extend_strategy": "kSameAsRequested",
            }
            if settings.gpu_memory_limit_mb:
                cuda["gpu_mem_limit"] = settings.gpu_memory_limit_mb << 20
            result.append((provider, cuda))
        else:
            result.append((provider, {}))
    return result


class OnnxSegmentationRunner(WindowedRunner):
    """Runs an exported network tile by tile (batched) with ONNX Runtime.

    Args:
        model_path: the ``.onnx`` file; its batch axis must be dynamic.
        spec: the network's preprocessing and output contract.
        settings: providers, device, precision, threads, tile batch size and step.
        engine_cache_dir: root of the TensorRT caches (required with the TensorRT EP).

    Raises:
        RunnerConfigError: a requested execution provider is not available in the installed
            onnxruntime build, or the precision cannot be provided.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        spec: ModelSpec,
        settings: RunnerSettings,
        engine_cache_dir: Path | None = None,
    ) -> None:
        available = ort.get_available_providers()
        missing = [p for p in settings.providers if p not in available]
        if missing:
            raise RunnerConfigError(
                f"execution provider(s) {missing} not available in this onnxruntime build "
                f"(available: {available}); install onnxruntime-gpu or change runner.providers"
            )
        self.model_path = model_path
        self.spec = spec
        self.settings = settings
        self.engine_cache_dir = engine_cache_dir
        self._digest = file_digest(model_path) if TENSORRT in settings.providers else ""
        device_id = int(settings.device.split(":")[1]) if ":" in settings.device else 0
        if any(p in GPU_PROVIDERS for p in settings.providers):
            preload_cuda_libraries()
        if TENSORRT in settings.providers:
            preload_tensorrt_libraries()
            self._gpu = gpu_identity(device_id)
            if self._gpu == UNKNOWN_GPU:
                logger.warning(
                    "GPU %d not identified (no torch, no nvidia-smi): TensorRT engine cache off",
                    device_id,
                )
        else:
            self._gpu = UNKNOWN_GPU
        self.session = self._session(settings.precision)
        self.decision = PrecisionDecision(settings.precision, settings.precision)
        if settings.precision != "fp32":
            self.decision = self._guard(settings.precision)
            if self.decision.used == "fp32":
                self.session = self._session("fp32")
        self.precision = self.decision.used
        self.providers: list[str] = list(self.session.get_providers())
        check_active_providers(settings.providers, self.providers)
        self._device_window = self._binding_window()
        logger.info(
            "ONNX Runtime session ready on %s, precision %s%s",
            self.providers,
            self.precision,
            f" ({self.decision.note})" if self.decision.note else "",
        )

    def _session(self, precision: str) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.settings.intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not self.settings.intra_op_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = provider_options(
            self.spec,
            self.settings,
            onnx_sha256=self._digest,
            engine_cache_dir=self.engine_cache_dir,
            precision=precision,
            gpu=self._gpu,
        )
        for _, opts in providers:
            for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
                if key in opts:
                    Path(opts[key]).mkdir(parents=True, exist_ok=True)
        return ort.InferenceSession(str(self.model_path), sess_options=options, providers=providers)

    def _guard(self, precision: str) -> PrecisionDecision:
        """Compare the reduced-precision session with fp32 on the CPU on a reference tile."""
        return guard_reduced_precision(
            self.model_path,
            self.spec,
            self.predict_tiles,
            self.settings,
            precision=precision,
            engine="engine",
            engine_errors=(RuntimeError, ort.capi.onnxruntime_pybind11_state.Fail),
        )

    def _binding_window(self) -> DeviceWindow | None:
        """The device-resident window through IO binding on a GPU provider, else None (host)."""
        if not self.providers or self.providers[0] not in GPU_PROVIDERS:
            return None
        try:
            import torch
        except ImportError:
            logger.warning(
                "torch is not installed: tiles go through host memory between network calls"
            )
            return None
        device = torch.device(self.settings.device if "cuda" in self.settings.device else "cuda")
        return DeviceWindow(device, self.predict_bound_tiles)

    def predict_tiles(self, tiles: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Logits for a batch of tiles ``(B, C, *patch)``."""
        (logits,) = self.session.run(
            [self.spec.output_name], {self.spec.input_name: tiles.astype(np.float32, copy=False)}
        )
        return np.asarray(logits, dtype=np.float32)

    def predict_bound_tiles(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of tiles held in a torch tensor, through IO binding.

        Input and output stay where ``batch`` lives (a CUDA device, or the CPU): ONNX Runtime
        reads and writes the tensors' memory directly.
        """
        import torch

        batch = batch.float().contiguous()
        output = torch.empty(
            (batch.shape[0], self.spec.num_outputs, *self.spec.patch_size),
            dtype=torch.float32,
            device=batch.device,
        )
        device_type = batch.device.type
        device_id = batch.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(
            name=self.spec.input_name,
            device_type=device_type,
            device_id=device_id,
            element_type=np.float32,
            shape=tuple(batch.shape),
            buffer_ptr=batch.data_ptr(),
        )
        binding.bind_output(
            name=self.spec.output_name,
            device_type=device_type,
            device_id=device_id,
            element_type=np.float32,
            shape=tuple(output.shape),
            buffer_ptr=output.data_ptr(),
        )
        if device_type == "cuda":
            # ORT runs on its own stream: the tiles written on torch's stream must be complete.
            # Only that stream is waited for, not the whole device (other cases' work).
            torch.cuda.current_stream(batch.device).synchronize()
        self.session.run_with_iobinding(binding)
        return output
