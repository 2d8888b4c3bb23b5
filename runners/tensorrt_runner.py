"""Native TensorRT runner: an engine built from the ONNX file with the ``tensorrt`` Python API.

The engine is built once per (network, precision, tile profile, GPU, TensorRT version) and
kept in ``engine_cache_dir`` (:mod:`runners.engine_cache`), with a timing cache that makes the
next build of any network on the same GPU faster. fp16 engines pass the precision guard
(:mod:`runners.precision_guard`) against ONNX Runtime fp32 on the CPU, or are rebuilt in fp32.
Tiles are cut and accumulated on the GPU in torch tensors whose addresses TensorRT reads and
writes (:mod:`runners.device_sliding_window`), so this engine needs torch beside tensorrt;
without either the start stops with a :class:`RunnerConfigError` naming what is missing.

One execution context serves every thread: its shape/address setting and the enqueue happen
under a lock, on the runner's own CUDA stream (never the legacy default stream, which
serialises with all other work), and its output is checked for NaN/inf by the window.

Not run on a GPU yet: the lent GPU machines have neither tensorrt nor onnxruntime-gpu, and
their wheels do not fit the device tool's transfer limit (docs/engines.md).
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from runners.engine_cache import (
    TileProfile,
    engine_cache_key,
    file_digest,
    tile_profile,
    timing_cache_key,
)
from runners.errors import RunnerConfigError
from runners.fp32_reference import guard_reduced_precision
from runners.precision_guard import PrecisionDecision
from runners.settings import RunnerSettings
from runners.window import DeviceWindow, WindowedRunner
from schemas.model_spec import ModelSpec

logger = logging.getLogger(__name__)

WORKSPACE_BYTES = 4 << 30


def _import_tensorrt() -> Any:
    """The tensorrt module; torch must import too (the device buffers and streams are torch's).

    Raises:
        RunnerConfigError: naming each of the two that is missing.
    """
    missing: list[str] = []
    tensorrt: Any = None
    for name in ("tensorrt", "torch"):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
            continue
        if name == "tensorrt":
            tensorrt = module
    if missing:
        raise RunnerConfigError(
            "runner.engine=tensorrt needs the tensorrt and torch packages; missing: "
            + "; ".join(missing)
            + ". The GPU bento serves with engine=onnxruntime and the TensorRT execution "
            "provider, which needs neither."
        )
    return tensorrt


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a concurrent reader sees the old file or the new one.

    Several workers may build the same engine at their first start; each writes its own
    temporary file and renames it into place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
        import torch

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
        self._context_lock = threading.Lock()
        self._stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        fp16_flag = getattr(self.trt.BuilderFlag, "FP16", None)
        if settings.precision == "fp16" and fp16_flag is None:
            # Strongly typed TensorRT builds take precision from the network's own types.
            self.engine = self._engine("fp32")
            self.decision = PrecisionDecision(
                "fp16",
                "fp32",
                note=f"TensorRT {self.trt.__version__} has no FP16 builder flag (strongly "
                "typed networks); export an fp16 ONNX for fp16",
            )
        else:
            self.engine = self._engine(settings.precision)
            self.decision = PrecisionDecision(settings.precision, settings.precision)
        if settings.precision == "fp16" and fp16_flag is not None:
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
        _atomic_write(engine_path, serialized)
        return runtime.deserialize_cuda_engine(serialized)

    def _build(self, precision: str, profile: TileProfile, timing_path: Path) -> bytes:
        trt = self.trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self._logger)
        # From the file, not bytes: large imported networks keep weights in external data files
        # beside the .onnx, which only a parser that knows the path can find.
        if not parser.parse_from_file(str(self.model_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RunnerConfigError(f"TensorRT cannot parse {self.model_path.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif not self.settings.allow_tf32 and hasattr(trt.BuilderFlag, "TF32"):
            # TF32 is on by default in TensorRT; fp32 must mean fp32 for the parity bounds.
            config.clear_flag(trt.BuilderFlag.TF32)
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
        _atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
        return bytes(serialized)

    def _guard(self) -> PrecisionDecision:
        self.context = self.engine.create_execution_context()
        return guard_reduced_precision(
            self.model_path,
            self.spec,
            self.predict_tiles,
            self.settings,
            precision="fp16",
            engine="TensorRT engine",
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
        caller = torch.cuda.current_stream(batch.device)
        with self._context_lock:
            # The engine's stream starts after the caller's work on the tiles is enqueued.
            self._stream.wait_stream(caller)
            if not self.context.set_input_shape(self.spec.input_name, tuple(batch.shape)):
                raise RuntimeError(
                    f"TensorRT refused input shape {tuple(batch.shape)} (profile "
                    f"{self.profile.min_batch}..{self.profile.max_batch} tiles)"
                )
            self.context.set_tensor_address(self.spec.input_name, batch.data_ptr())
            self.context.set_tensor_address(self.spec.output_name, output.data_ptr())
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        # The caller's later reads of ``output`` wait for the engine; the allocator must not
        # reuse the buffers while the engine's stream still uses them.
        caller.wait_stream(self._stream)
        batch.record_stream(self._stream)
        output.record_stream(self._stream)
        return output

    def predict_tiles(self, tiles: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Logits for host tiles (copied to the GPU and back; the guard uses it)."""
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)
        result: npt.NDArray[np.float32] = self.predict_bound_tiles(batch).cpu().numpy()
        return result
