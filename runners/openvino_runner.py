"""OpenVINO runner: the registry's ONNX compiled for the CPU by OpenVINO's CPU plugin.

OpenVINO runs 3-D convolutions with direct (JIT) kernels for the CPU's instruction set rather
than ONNX Runtime's im2col + GEMM. The ONNX file's dynamic tile batch is compiled as static
shapes, one per batch size met (``runner.tile_batch_size`` at start; a smaller last batch, the
guard's single tile or mirror flips on first use): a static shape lets the plugin plan memory
once instead of at every call. The compiled models are cached under
``engine_cache_dir/openvino/<key>``, the key covering the ONNX SHA-256, the precision, the tile
shape, the CPU's name and instruction sets and the OpenVINO version
(:func:`runners.engine_cache.cpu_model_cache_key`; OpenVINO keys each batch size inside it), so a
restart loads them instead of compiling.

Precision: fp32 is asked for explicitly (OpenVINO's CPU plugin otherwise picks bf16 by itself
on AMX / AVX-512 BF16 CPUs). bf16 or fp16 are compiled only where the CPU lists them among its
optimisation capabilities (else the start stops with a message naming both) and serve only if
the precision guard (:mod:`runners.precision_guard`) finds them in agreement with ONNX Runtime
fp32 on the reference tile and (bf16, int8) the model folder's held-out record
(``precisions.json``) admits them; otherwise the model is recompiled in fp32 and ``decision.note``
says why. int8 is the model folder's ``model.int8.xml``, an OpenVINO IR that NNCF quantised
(``cerebrascan pipeline quantize``; no nncf needed here): it goes through the same guard against
ONNX Runtime fp32 on the ONNX, and its cache key covers the IR's digest instead of the ONNX's.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from runners.engine_cache import cpu_features, cpu_model_cache_key, file_digest
from runners.errors import RunnerConfigError
from runners.fp32_reference import guard_reduced_precision
from runners.openvino_graph import GRAPH_REWRITE_VERSION, channel_multiple_for, prepare_network
from runners.precision_guard import PrecisionDecision
from runners.precision_record import separate_network_digest
from runners.settings import RunnerSettings
from runners.window import WindowedRunner
from schemas.model_spec import ModelSpec

__all__ = [
    "OpenVINOSegmentationRunner",
    "import_openvino",
    "openvino_available",
    "openvino_offers",
]

logger = logging.getLogger(__name__)

OPENVINO_DEVICE = "CPU"
CAPABILITY_OF_PRECISION = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16", "int8": "INT8"}
"""The CPU plugin's optimisation capability each precision needs."""
INT8_MODEL_FILE = "model.int8.xml"
"""The NNCF-quantised IR beside ``model.onnx`` (weights in ``model.int8.bin``)."""
INT8_MAKE_COMMAND = "cerebrascan pipeline quantize --model-dir"


def import_openvino() -> Any:
    """The ``openvino`` module.

    Raises:
        RunnerConfigError: the package is not installed (naming the engine and the extra).
    """
    try:
        import openvino
    except ImportError as exc:
        raise RunnerConfigError(
            "runner.engine=openvino needs the openvino package, which is not installed "
            f"(pip install -c constraints.txt '.[openvino]'): {exc}"
        ) from exc
    return openvino


def openvino_available() -> bool:
    """Whether the openvino package can be imported (what ``runner.engine: auto`` asks)."""
    try:
        import_openvino()
    except RunnerConfigError:
        return False
    return True


def openvino_offers(precision: str) -> bool:
    """Whether OpenVINO is installed and its CPU plugin offers ``precision`` on this CPU
    (what ``runner.precision: auto`` asks)."""
    if not openvino_available():
        return False
    capabilities = (
        import_openvino().Core().get_property(OPENVINO_DEVICE, "OPTIMIZATION_CAPABILITIES")
    )
    return CAPABILITY_OF_PRECISION[precision] in [str(c) for c in capabilities]


class OpenVINOSegmentationRunner(WindowedRunner):
    """Runs an exported network tile batch by tile batch with OpenVINO on the CPU.

    Args:
        model_path: the ``.onnx`` file; its batch axis must be dynamic.
        spec: the network's preprocessing and output contract.
        settings: device (``cpu`` only), precision, OpenVINO threads / streams / performance
            hint, tile batch size and step, guard bounds.
        engine_cache_dir: root of the compiled-model cache (``<root>/openvino/<key>``).
        require_held_out_record: bf16 / int8 need the model folder's held-out record
            (``precisions.json``) besides the reference tile; False only for the tool that
            measures that record (``cerebrascan pipeline precisions``).

    Raises:
        RunnerConfigError: openvino is not installed, the device is not ``cpu``, or the CPU
            lacks the requested precision.
    """

    name = "openvino"

    def __init__(
        self,
        model_path: Path,
        spec: ModelSpec,
        settings: RunnerSettings,
        engine_cache_dir: Path,
        *,
        require_held_out_record: bool = True,
    ) -> None:
        self.ov = import_openvino()
        self.require_held_out_record = require_held_out_record
        if settings.device != "cpu":
            raise RunnerConfigError(
                f"runner.engine=openvino runs on the CPU only, got runner.device="
                f"{settings.device!r}; use engine tensorrt, torch or onnxruntime on a GPU"
            )
        self.core = self.ov.Core()
        self.capabilities: list[str] = [
            str(c) for c in self.core.get_property(OPENVINO_DEVICE, "OPTIMIZATION_CAPABILITIES")
        ]
        self.cpu_name = str(self.core.get_property(OPENVINO_DEVICE, "FULL_DEVICE_NAME"))
        if settings.precision == "auto":  # as runners.factory.resolve_precision decides
            chosen = "bf16" if CAPABILITY_OF_PRECISION["bf16"] in self.capabilities else "fp32"
            settings = settings.model_copy(update={"precision": chosen})
        self.int8_model_path = model_path.with_name(INT8_MODEL_FILE)
        if settings.precision == "int8" and not (
            self.int8_model_path.is_file() and self.int8_model_path.with_suffix(".bin").is_file()
        ):
            raise RunnerConfigError(
                f"runner.precision='int8' needs the quantised model {self.int8_model_path} "
                f"(and its .bin), which is missing: make it with `{INT8_MAKE_COMMAND} "
                f"{model_path.parent}`, or use precision fp32"
            )
        needed = CAPABILITY_OF_PRECISION[settings.precision]
        if needed not in self.capabilities:
            raise RunnerConfigError(
                f"runner.precision={settings.precision!r} with runner.engine=openvino needs a "
                f"CPU with {needed} support (AVX-512 BF16 or AMX for bf16); this CPU "
                f"({self.cpu_name}) offers {self.capabilities}: use precision fp32"
            )
        self.model_path = model_path
        self.spec = spec
        self.settings = settings
        self.engine_cache_dir = engine_cache_dir
        self._digest = file_digest(model_path)
        self._device_window = None
        self._lock = threading.Lock()
        self._idle_lock = threading.Lock()
        self._idle: dict[int, list[Any]] = {}
        """Idle infer requests per batch size: as many as calls ever ran at once, not one per
        thread (a server's thread pool would keep one per thread alive)."""
        self._use_precision(settings.precision)
        self.decision = PrecisionDecision(settings.precision, settings.precision)
        if settings.precision != "fp32":
            self.decision = self._guard(settings.precision)
            if self.decision.used == "fp32":
                self._use_precision("fp32")
        self.providers = [f"openvino-{self.ov.__version__.split('-')[0]}:{OPENVINO_DEVICE}"]
        logger.info(
            "OpenVINO model ready on %s (%s), precision %s, %s threads, %s stream(s)%s",
            self.cpu_name,
            "cached" if self.loaded_from_cache else "compiled",
            self.precision,
            self.compiled.get_property("INFERENCE_NUM_THREADS"),
            self.compiled.get_property("NUM_STREAMS"),
            f" ({self.decision.note})" if self.decision.note else "",
        )

    @property
    def loaded_from_cache(self) -> bool:
        """Whether the compiled model came from the cache rather than a compilation."""
        return bool(self.compiled.get_property("LOADED_FROM_CACHE"))

    def cache_key(self, precision: str) -> str:
        """The compiled-model cache key for ``precision`` on this CPU and OpenVINO build."""
        return cpu_model_cache_key(
            onnx_sha256=(
                separate_network_digest(self.model_path.parent, INT8_MODEL_FILE) or "missing"
            )
            if precision == "int8"
            else self._digest,
            precision=precision,
            input_shape=(len(self.spec.modalities), *self.spec.patch_size),
            cpu_name=self.cpu_name,
            features=cpu_features(),
            backend="openvino",
            backend_version=f"{self.ov.__version__}+{GRAPH_REWRITE_VERSION}",
        )

    def _config(self, precision: str, cache_dir: Path) -> dict[str, Any]:
        hint = self.ov.properties.hint
        # int8: the quantised layers run int8, the rest (ignored scope, norms) fp32.
        inference_type = {
            "fp32": self.ov.Type.f32,
            "int8": self.ov.Type.f32,
            "bf16": self.ov.Type.bf16,
        }.get(precision, self.ov.Type.f16)
        mode = (
            hint.PerformanceMode.LATENCY
            if self.settings.openvino_performance_hint == "latency"
            else hint.PerformanceMode.THROUGHPUT
        )
        config: dict[str, Any] = {
            hint.performance_mode: mode,
            # Explicit: on AMX / AVX-512 BF16 CPUs the plugin would otherwise run bf16.
            hint.inference_precision: inference_type,
            self.ov.properties.num_streams: self.settings.openvino_streams,
            self.ov.properties.cache_dir: str(cache_dir),
        }
        if self.settings.openvino_threads:
            config[self.ov.properties.inference_num_threads] = self.settings.openvino_threads
        return config

    def _use_precision(self, precision: str) -> None:
        """Serve ``precision``: compiled models and idle requests of another one are dropped,
        the configured tile batch is compiled (or loaded from the keyed cache) now."""
        self.precision = precision
        source = self.int8_model_path if precision == "int8" else self.model_path
        self.network = self.core.read_model(str(source))
        if precision != "int8":  # the quantised IR keeps NNCF's graph as it is
            multiple = channel_multiple_for(cpu_features(), precision)
            self.network = prepare_network(self.network, multiple)
        self._by_batch: dict[int, Any] = {}
        self._idle = {}
        self.cache_dir = self._cache_dir(precision)
        self.compiled = self._compiled_for(self.settings.tile_batch_size)

    def _cache_dir(self, precision: str) -> Path:
        cache_dir = self.engine_cache_dir / "openvino" / self.cache_key(precision)
        cache_dir.mkdir(parents=True, exist_ok=True)
        return cache_dir

    def _compiled_for(self, batch: int) -> Any:
        """The model compiled for a static batch of ``batch`` tiles at the current precision
        (compiled on first use, from the keyed cache when it is there)."""
        compiled = self._by_batch.get(batch)
        if compiled is not None:
            return compiled
        with self._lock:
            if batch not in self._by_batch:
                network = self.network.clone()
                network.reshape(
                    {
                        self.spec.input_name: [
                            batch,
                            len(self.spec.modalities),
                            *self.spec.patch_size,
                        ]
                    }
                )
                self._by_batch[batch] = self.core.compile_model(
                    network, OPENVINO_DEVICE, self._config(self.precision, self.cache_dir)
                )
            return self._by_batch[batch]

    def _guard(self, precision: str) -> PrecisionDecision:
        """Compare the reduced-precision model with ONNX Runtime fp32 on the reference tile,
        then (bf16, int8) ask the model folder's held-out record."""
        return guard_reduced_precision(
            self.model_path,
            self.spec,
            self.predict_tiles,
            self.settings,
            precision=precision,
            engine="OpenVINO model",
            require_held_out_record=self.require_held_out_record,
            onnx_sha256=self._digest,
        )

    def predict_tiles(self, tiles: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Logits ``(B, K, *patch)`` for a batch of tiles ``(B, C, *patch)``.

        Infer requests are reused (one per concurrent call and batch size; several threads may
        call at once); a request's output buffer is overwritten by its next inference, so the
        logits are copied out before it is handed back.
        """
        batch = len(tiles)
        compiled = self._compiled_for(batch)
        with self._idle_lock:
            idle = self._idle.setdefault(batch, [])
            request = idle.pop() if idle else compiled.create_infer_request()
        # share_inputs: the request reads the tiles in place (no copy into its own tensor)
        request.infer(
            {self.spec.input_name: np.ascontiguousarray(tiles, dtype=np.float32)},
            share_inputs=True,
        )
        logits = np.array(request.get_tensor(self.spec.output_name).data, dtype=np.float32)
        with self._idle_lock:
            if self._by_batch.get(batch) is compiled:  # not after a switch of precision
                self._idle.setdefault(batch, []).append(request)
        return logits
