"""Native TensorRT runner: an engine built from the ONNX file with the ``tensorrt`` Python API.

The engine is built once per (network, precision, tile profile, GPU, TensorRT version) and
kept in ``engine_cache_dir`` (:mod:`runners.engine_cache`), with a timing cache that makes the
next build of any network on the same GPU faster. fp16 engines pass the precision guard
(:mod:`runners.precision_guard`) against ONNX Runtime fp32 on the CPU, or are rebuilt in fp32.
Tiles are cut and accumulated on the GPU in torch tensors whose addresses TensorRT reads and
writes (:mod:`runners.device_sliding_window`).

Not measured on a GPU yet: the lent GPU machines have neither tensorrt nor onnxruntime-gpu.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from runners.engine_cache import (
    TileProfile,
    engine_cache_key,
    file_digest,
    tile_profile,
    timing_cache_key,
)
from runners.errors import RunnerConfigError
from runners.precision_guard import PrecisionDecision, compare_precisions, reference_tile
from runners.settings import RunnerSettings
from runners.window import DeviceWindow, WindowedRunner
from schemas.model_spec import ModelSpec

logger = logging.getLogger(__name__)

WORKSPACE_BYTES = 4 << 30


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise RunnerConfigError(
            "runner.engine=tensorrt needs the tensorrt package (the GPU bento installs it; "
            f"pip install tensorrt): {exc}"
        ) from exc
    return tensorrt


class TensorRTSegmentationRunner(WindowedRunner):
    """Runs the network as a native TensorRT engine on one CUDA device.

    Args:
        model_path: the ``.onnx`` file (dynamic batch axis).
        spec: the network's preprocessing and output contract.
        settings: device, precision (fp32 / fp16), tile batch size and step, guard bounds.
        engine_cache_dir: where engines and timing caches are kept.

    Raises:
        RunnerConfigError: tensorrt or CUDA is missing, bf16 was asked for, or the ONNX file
            does not parse.
    """

    name = "tensorrt"

    def __init__(
        self,
        model_path: Path,
        spec: ModelSpec,
        settings: RunnerSettings,
        engine_cache_dir: Path,
    ) -> None:
        if settings.precision == "bf16":
            raise RunnerConfigError("runner.engine=tensorrt supports precision fp32 or fp16")
        self.trt = _import_tensorrt()
        from runners.torch_runner import torch_device

        self.device = torch_device(settings.device)
        if self.device.type != "cuda":
            raise RunnerConfigError(
                f"runner.engine=tensorrt needs a CUDA device, got {settings.device!r}"
            )
        self.model_path = model_path
        self.spec = spec
        self.settings = settings
        self.engine_cache_dir = engine_cache_dir
        self.profile = tile_profile(spec, settings.tile_batch_size)
        self._logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.engine = self._engine(settings.precision)
        self.decision = PrecisionDecision(settings.precision, settings.precision)
        if settings.precision == "fp16":
            self.decision = self._guard()
            if self.decision.used == "fp32":
                self.engine = self._engine("fp32")
        self.precision = self.decision.used
        self.context = self.engine.create_execution_context()
        self.providers = [f"tensorrt-{self.trt.__version__}:{self.device}"]
        self._device_window = DeviceWindow(self.device, self.predict_bound_tiles)
        logger.info(
            "TensorRT engine ready on %s, precision %s%s",
            self.device,
            self.precision,
            f" ({self.decision.note})" if self.decision.note else "",
        )

    def _gpu(self) -> tuple[str, str]:
        import torch

        major, minor = torch.cuda.get_device_capability(self.device)
        return torch.cuda.get_device_name(self.device), f"{major}.{minor}"

    def _engine(self, precision: str) -> Any:
        """Load the cached engine for this precision, or build and cache it."""
        trt = self.trt
        gpu_name, capability = self._gpu()
        key = engine_cache_key(
            onnx_sha256=file_digest(self.model_path),
            precision=precision,
            profile=self.profile,
            gpu_name=gpu_name,
            compute_capability=capability,
            backend="tensorrt",
            backend_version=trt.__version__,
        )
        engine_path = self.engine_cache_dir / "tensorrt" / f"{key}.engine"
        timing_key = timing_cache_key(
            gpu_name=gpu_name, compute_capability=capability, backend_version=trt.__version__
        )
        timing_path = self.engine_cache_dir / "tensorrt-timing" / f"{timing_key}.cache"
        runtime = trt.Runtime(self._logger)
        if engine_path.is_file():
            engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if engine is not None:
                logger.info("loaded TensorRT engine %s", engine_path.name)
                return engine
            logger.warning("cached engine %s did not load; rebuilding", engine_path.name)
        serialized = self._build(precision, self.profile, timing_path)
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        engine_path.write_bytes(serialized)
        return runtime.deserialize_cuda_engine(serialized)

    def _build(self, precision: str, profile: TileProfile, timing_path: Path) -> bytes:
        trt = self.trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(self.model_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RunnerConfigError(f"TensorRT cannot parse {self.model_path.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        optimisation = builder.create_optimization_profile()
        optimisation.set_shape(
            profile.input_name,
            profile.shape(profile.min_batch),
            profile.shape(profile.opt_batch),
            profile.shape(profile.max_batch),
        )
        config.add_optimization_profile(optimisation)
        cache = config.create_timing_cache(
            timing_path.read_bytes() if timing_path.is_file() else b""
        )
        config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RunnerConfigError(f"TensorRT failed to build a {precision} engine")
        timing_path.parent.mkdir(parents=True, exist_ok=True)
        timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        return bytes(serialized)

    def _guard(self) -> PrecisionDecision:
        tile = reference_tile(self.spec)
        session = ort.InferenceSession(str(self.model_path), providers=["CPUExecutionProvider"])
        (reference,) = session.run([self.spec.output_name], {self.spec.input_name: tile})
        self.context = self.engine.create_execution_context()
        candidate = self.predict_tiles(tile)
        return compare_precisions(
            np.asarray(reference, dtype=np.float32),
            candidate,
            self.spec,
            requested="fp16",
            min_agreement=self.settings.precision_guard_min_agreement,
            max_probability_difference=self.settings.precision_guard_max_probability_difference,
        )

    def predict_bound_tiles(self, batch: Any) -> Any:
        """Logits for a CUDA tensor of tiles; TensorRT reads and writes the tensors in place."""
        import torch

        batch = batch.float().contiguous()
        output = torch.empty(
            (batch.shape[0], self.spec.num_outputs, *self.spec.patch_size),
            dtype=torch.float32,
            device=batch.device,
        )
        self.context.set_input_shape(self.spec.input_name, tuple(batch.shape))
        self.context.set_tensor_address(self.spec.input_name, batch.data_ptr())
        self.context.set_tensor_address(self.spec.output_name, output.data_ptr())
        stream = torch.cuda.current_stream(batch.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return output

    def predict_tiles(self, tiles: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Logits for host tiles (copied to the GPU and back; the guard uses it)."""
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)
        result: npt.NDArray[np.float32] = self.predict_bound_tiles(batch).cpu().numpy()
        return result
