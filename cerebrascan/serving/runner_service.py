"""The runner service: the network in a BentoML service of its own, batched across cases.

The front service (``service.py``) decodes, preprocesses, postprocesses and runs the analyzers;
it sends each preprocessed case here **once** (``bentoml.depends``), not tile by tile: a 16.8 MB
tile costs ~80 ms through the service boundary, an order of magnitude more than a GPU spends on
it. Here, tiling, mirror TTA and the Gaussian accumulation run next to the network, and the
batchable API lets cases that arrive together share tile batches
(:mod:`runners.cross_case_batching`). On a GPU, with an engine that has a device window (torch
installed beside it), the cases stay on the device: one upload per case, tiles of all cases
cut, flipped, batched and accumulated there, logits copied back once per case
(:mod:`runners.device_cross_case`).

What crosses the boundary (pickled by BentoML between its own processes, protocol 5, so arrays
travel as raw buffers; the runner service refuses nothing it did not get from the front):

- in: the preprocessed volume as ``batching.volume_dtype`` (float32 by default: the network's
  own input dtype) and the per-case options;
- out: float16 class probabilities on the network grid (the front resamples them linearly to
  the input grid and takes the argmax there, as nnU-Net does, so labels argmaxed here on the
  coarser grid would not be the same labels), the float16 TTA disagreement only when asked for,
  or float32 logits for nnU-Net models (their export resamples logits).

A case that fails (wrong channel count, NaN, a network error on its tiles) fails alone; the
other cases of its batch get their results.

Each case carries the front's request id (``X-Request-ID`` or the gRPC ``x-request-id``); the
runner service binds it while it logs that case, so the JSON log lines of both services can be
joined, and its batch line lists the ids of the cases it batched.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any, Literal

import aiohttp
import bentoml
import httpx
import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)
from starlette.exceptions import HTTPException

from cerebrascan.errors import InputError, RunnerUnavailableError
from cerebrascan.registry import (
    ModelNotAvailableError,
    ResolvedModel,
    resolve_model,
    resolve_model_version,
)
from cerebrascan.serving.logs import (
    REQUEST_ID_PATTERN,
    bound_request_id,
    current_request_id,
    is_plain_request_id,
)
from cerebrascan.settings import Settings
from runners.cross_case_batching import CaseRequest, cross_case_sliding_window
from runners.engine_check import (
    CachedProbe,
    EngineHealth,
    Probe,
    check_reference_tile,
    exit_if_sticky,
)
from runners.errors import EngineCheckError
from runners.factory import build_runner
from runners.precision_guard import PrecisionDecision
from runners.prediction import RunnerPrediction
from runners.protocol import TileRunner
from runners.sliding_window import activate
from runners.window import mirror_axes_for
from schemas.model_spec import ModelSpec

logger = logging.getLogger(__name__)

RUNNER_CALL_TIMEOUT_S = 600
"""The runner service's request timeout, and the front's client timeout for one call."""

LOADED_VERSIONS = 2
"""Model versions the runner service keeps loaded (the promoted one and its predecessor)."""

WIRE_DTYPES = ("float16", "float32")
"""dtypes an array may have on the wire (volumes in, probabilities, logits, disagreement out)."""
MAX_WIRE_DIMENSIONS = 5


def array_from_wire(value: Any) -> Any:
    """An array field's value: a numpy array as is (pickled between BentoML's own processes),
    or decoded from ``{"dtype", "shape", "data": base64}`` (JSON over the network to a runner
    service deployed on its own, ``batching.runner_url``: never a pickle).

    Raises:
        ValueError: the JSON form names another dtype, a bad shape or the wrong byte count.
    """
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data"}:
        raise ValueError("expected a numpy array or an object with dtype, shape and data")
    dtype, shape, data = value["dtype"], value["shape"], value["data"]
    if dtype not in WIRE_DTYPES:
        raise ValueError(f"array dtype must be one of {WIRE_DTYPES}, got {str(dtype)[:20]!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_WIRE_DIMENSIONS
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise ValueError(f"array shape must be a list of at most 5 sizes, got {str(shape)[:60]}")
    if not isinstance(data, str):
        raise ValueError("array data must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"array data is not base64: {exc}") from None
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if len(raw) != expected:
        raise ValueError(
            f"array data holds {len(raw)} bytes, shape {shape} {dtype} needs {expected}"
        )
    return np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)


def array_to_wire(array: np.ndarray) -> dict[str, Any]:
    """The JSON form of an array field (see :func:`array_from_wire`)."""
    return {
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "data": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii"),
    }


WireArray = Annotated[
    np.ndarray,
    BeforeValidator(array_from_wire),
    PlainSerializer(array_to_wire, when_used="json"),
    WithJsonSchema(
        {
            "type": "object",
            "description": "numpy array: pickled between BentoML's own processes; as JSON "
            "{dtype: float16|float32, shape: [...], data: base64 of the C-order bytes}",
        }
    ),
]
"""A numpy array field: BentoML pickles it (protocol 5, raw buffers) between its own
processes; to a runner service at ``batching.runner_url`` it travels as JSON with base64 data."""

PUBLIC_RUNNER_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
"""Routes of a separately deployed runner service open without its token (probes, scrapers)."""


class RunnerTokenMiddleware:
    """Refuses every request to the runner service but its health checks and ``/metrics``
    unless it carries ``Authorization: Bearer <batching.runner_token>`` (401 otherwise).

    Args:
        app: the runner service's ASGI app.
        token: the shared secret the front sends.
    """

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_RUNNER_PATHS:
            presented = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(presented, self._expected):
                reason = "missing" if not presented else "invalid"
                body = json.dumps({"error": f"{reason} runner token"}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def forwardable_request_id() -> str | None:
    """The request id bound in this context if it is a plain token (as ``X-Request-ID`` must
    be), else None: arbitrary text never travels into the runner service's logs."""
    request_id = current_request_id()
    if request_id is not None and not is_plain_request_id(request_id):
        logger.debug("request id not forwarded to the runner service: not a plain token")
        return None
    return request_id


class RunnerCase(BaseModel):
    """One preprocessed case sent to the runner service."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    volume: WireArray
    """(channels, x, y, z) float32 or float16 on the network grid."""
    mirror_tta: bool = False
    tta_disagreement: bool = False
    output: Literal["probabilities", "logits"] = "probabilities"
    probability_dtype: Literal["float16", "float32"] = "float16"
    model_name: str | None = None
    model_version: str | None = None
    """The registry version the front preprocessed the case for; the runner service loads it
    if it is not the one it started with (the front was promoted to it)."""
    request_id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)
    """The front's request id (a plain token, as ``X-Request-ID``), bound in the runner
    service's log lines about this case."""


class RunnerResult(BaseModel):
    """The runner service's answer for one case: its arrays, or why it failed."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    probabilities: WireArray | None = None
    """(outputs, x, y, z) softmax (or sigmoid per region) on the network grid, float16 unless
    the case asked for float32."""
    logits: WireArray | None = None
    """(outputs, x, y, z) float32, only when ``output == "logits"``."""
    tta_disagreement: WireArray | None = None
    """(x, y, z) float16, only when asked for with mirror TTA."""
    error: str | None = None
    error_kind: Literal["input", "runner"] | None = None
    """``input``: the case itself cannot be segmented; ``runner``: the network failed on it."""
    batch_cases: int = 1
    """How many cases shared this case's runner call (for logs and tests)."""
    runner_ms: float = 0.0
    engine: str = ""
    providers: list[str] = []
    precision: str = "fp32"
    precision_note: str | None = None


class CrossCaseRunner:
    """Segments several preprocessed cases in one pass, their tiles sharing network calls.

    Args:
        tile_runner: executes the network on a batch of tiles (``predict_tiles``).
        spec: the network's contract (patch, channels, outputs, mirror axes).
        tile_step: sliding-window step as a fraction of the patch.
        tile_batch_size: most tile images per network call.
        model_version: the version this runner serves.
        device_resident: tile on the engine's device (:mod:`runners.device_cross_case`); None:
            when the engine has a device window on a CUDA device. Cases that ask for the
            flips' disagreement always take the host window.
    """

    def __init__(
        self,
        tile_runner: TileRunner,
        spec: ModelSpec,
        *,
        tile_step: float,
        tile_batch_size: int,
        model_version: str,
        device_resident: bool | None = None,
    ) -> None:
        self.tile_runner = tile_runner
        self.spec = spec
        self.tile_step = tile_step
        self.tile_batch_size = tile_batch_size
        self.model_version = model_version
        window = tile_runner.device_window
        if device_resident is None:
            device_resident = window is not None and window.device.type == "cuda"
        self.device_window = window if device_resident else None

    def segment(self, cases: list[RunnerCase]) -> list[RunnerResult]:
        """One result per case, in order; a failing case never raises for the others."""
        clock = time.perf_counter()
        results: list[RunnerResult | None] = [None] * len(cases)
        requests: list[CaseRequest] = []
        indices: list[int] = []
        for index, case in enumerate(cases):
            if case.model_version is not None and case.model_version != self.model_version:
                results[index] = RunnerResult(
                    error=f"runner serves model version {self.model_version}, the case was "
                    f"preprocessed for version {case.model_version}",
                    error_kind="runner",
                )
                continue
            volume = np.asarray(case.volume)
            if volume.dtype not in (np.float32, np.float16):
                results[index] = RunnerResult(
                    error=f"volume dtype must be float32 or float16, got {volume.dtype}",
                    error_kind="input",
                )
                continue
            requests.append(
                CaseRequest(
                    volume=volume,
                    mirror_axes=mirror_axes_for(self.spec, case.mirror_tta),
                    return_disagreement=case.tta_disagreement and case.mirror_tta,
                )
            )
            indices.append(index)
        window_arguments = {
            "patch_size": self.spec.patch_size,
            "num_classes": self.spec.num_outputs,
            "channels": len(self.spec.modalities),
            "step": self.tile_step,
            "batch_size": self.tile_batch_size,
        }
        if self.device_window is not None and not any(r.return_disagreement for r in requests):
            # torch is imported only where an engine has a device window
            from runners.device_cross_case import device_cross_case_sliding_window

            outcome = device_cross_case_sliding_window(
                requests,
                self.device_window.predict,
                device=self.device_window.device,
                **window_arguments,  # type: ignore[arg-type]
            )
        else:
            outcome = cross_case_sliding_window(
                requests,
                self.tile_runner.predict_tiles,
                **window_arguments,  # type: ignore[arg-type]
            )
        elapsed_ms = (time.perf_counter() - clock) * 1000
        for position, index in enumerate(indices):
            output, error = outcome.outputs[position], outcome.errors[position]
            if output is None:
                kind: Literal["input", "runner"] = (
                    "runner" if error and error.startswith("network failed") else "input"
                )
                results[index] = RunnerResult(error=error, error_kind=kind)
                continue
            case = cases[index]
            disagreement = (
                output.disagreement.astype(np.float16) if output.disagreement is not None else None
            )
            if case.output == "logits":
                results[index] = RunnerResult(logits=output.logits, tta_disagreement=disagreement)
            else:
                probabilities = activate(output.logits, self.spec.output_kind)
                results[index] = RunnerResult(
                    probabilities=probabilities.astype(case.probability_dtype),
                    tta_disagreement=disagreement,
                )
        final: list[RunnerResult] = []
        for result in results:
            assert result is not None
            result.batch_cases = len(cases)
            result.runner_ms = round(elapsed_ms, 1)
            result.engine = self.tile_runner.name
            result.providers = list(self.tile_runner.providers)
            result.precision = self.tile_runner.precision
            result.precision_note = self.tile_runner.decision.note
            final.append(result)
        for position, (case, result) in enumerate(zip(cases, final)):
            with bound_request_id(case.request_id):
                if result.error is None:
                    logger.info(
                        "runner case %d of %d: segmented in a batch of %d, %.0f ms",
                        position + 1,
                        len(cases),
                        len(cases),
                        elapsed_ms,
                    )
                else:
                    logger.warning(
                        "runner case %d of %d failed (%s): %s",
                        position + 1,
                        len(cases),
                        result.error_kind,
                        result.error,
                    )
        failed = sum(r.error is not None for r in final)
        logger.info(
            "runner call: %d case(s) (request ids %s), %d failed, %d network calls "
            "(%d mixing cases), %.0f ms",
            len(cases),
            ", ".join(case.request_id or "-" for case in cases),
            failed,
            len(outcome.batch_sizes),
            outcome.mixed_batches,
            elapsed_ms,
        )
        return final


def build_tile_runner(model: ResolvedModel, settings: Settings) -> TileRunner:
    """The engine that executes tile batches in the runner service (``runner.engine``).

    Every engine has ``predict_tiles``; the cross-case tiling here is host-side numpy.
    """
    return build_runner(model.folder, model.spec, settings.runner, settings.engine_cache_dir)


class SegmentationRunnerService:
    """Runs the segmentation network for the front service, batching cases that arrive together.

    It starts with ``model_name@model_alias``. A case preprocessed for another version (the
    front was promoted) loads that version first; the last :data:`LOADED_VERSIONS` versions stay
    loaded, so studies still running on the old version finish on it.

    The plain class: :func:`build_runner_service` makes the BentoML service of it, bound to the
    process's settings (BentoML instantiates a service class without arguments).

    Args:
        settings: the process's settings (model, registry, runner, batching).

    Raises:
        ModelNotAvailableError: the registry has no ``model_name@model_alias``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model = resolve_model(settings)
        self._lock = threading.Lock()
        self._engines: OrderedDict[tuple[str, str], CrossCaseRunner] = OrderedDict()
        # consecutive engine failures: past settings.health the process exits to be restarted
        self.health = EngineHealth(settings.health.sticky_engine_failures)
        self._probe = CachedProbe(
            lambda: check_reference_tile(self.engine.tile_runner),
            settings.health.readiness_probe_ttl_s,
        )
        engine = self._load(self.model)
        self.providers: list[str] = list(engine.tile_runner.providers)
        logger.info(
            "runner service ready: %s version %s on %s (max %d cases per call)",
            self.model.name,
            self.model.version,
            self.providers,
            settings.batching.max_batch_size,
        )

    def _load(self, model: ResolvedModel, tile_runner: TileRunner | None = None) -> CrossCaseRunner:
        engine = CrossCaseRunner(
            tile_runner if tile_runner is not None else build_tile_runner(model, self.settings),
            model.spec,
            tile_step=self.settings.runner.tile_step,
            tile_batch_size=self.settings.runner.tile_batch_size,
            model_version=model.version,
        )
        self._engines[(model.name, model.version)] = engine
        while len(self._engines) > LOADED_VERSIONS:
            evicted, _ = self._engines.popitem(last=False)
            logger.info("runner service unloaded %s version %s", *evicted)
        return engine

    def engine_for(self, name: str | None, version: str | None) -> CrossCaseRunner:
        """The loaded engine of ``name`` version ``version`` (loaded now if needed).

        Raises:
            ModelNotAvailableError: the registry has no such version.
        """
        key = (name or self.model.name, version or self.model.version)
        with self._lock:
            if key not in self._engines:
                logger.info("runner service loading %s version %s", *key)
                self._load(resolve_model_version(self.settings, *key))
            self._engines.move_to_end(key)
            return self._engines[key]

    @property
    def engine(self) -> CrossCaseRunner:
        """The engine of the most recently used version."""
        return next(reversed(self._engines.values()))

    def check_version(self, model_name: str, model_version: str) -> dict[str, Any]:
        """Load ``model_name`` version ``model_version`` and run the reference tile through its
        engine; keep it loaded when it answers (a promotion asks this before its alias moves).

        Returns:
            ``{"ok": true, "error": null}``, or ``ok`` false and why the version cannot serve
            (its files, its engine build, or its reference-tile logits); the versions loaded
            before are untouched then.
        """
        try:
            model = resolve_model_version(self.settings, model_name, model_version)
            try:
                tile_runner = build_tile_runner(model, self.settings)
            except Exception as exc:  # a file that does not load (bad protobuf, opset, ...)
                raise EngineCheckError(
                    f"{model_name} version {model_version} does not load: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            check_reference_tile(tile_runner)
        except (ModelNotAvailableError, EngineCheckError) as exc:
            logger.warning(
                "runner service refused %s version %s: %s", model_name, model_version, exc
            )
            return {"ok": False, "error": str(exc)}
        with self._lock:
            self._load(model, tile_runner)
        logger.info("runner service checked and loaded %s version %s", model_name, model_version)
        return {"ok": True, "error": None}

    def readiness(self) -> Probe:
        """Whether the engine answers: a sticky failure, else the cached reference-tile probe
        (``health.readiness_probe_ttl_s``)."""
        sticky = self.health.sticky_reason
        if sticky is not None:
            return Probe(False, sticky, 0.0)
        return self._probe()

    def __is_ready__(self) -> bool:
        """``/readyz``: 503 with the reason while the engine cannot answer."""
        probe = self.readiness()
        if not probe.ready:
            raise HTTPException(status_code=503, detail=f"runner not ready: {probe.reason}")
        return True

    def _record_engine_health(self, results: list[RunnerResult]) -> None:
        """Count a pass's network failure once (not once per case of its batch); a pass that
        answered resets the count. Exits the process when the engine is broken for good."""
        if any(r.error_kind == "runner" for r in results):
            error = next(r.error for r in results if r.error_kind == "runner")
            self.health.record_failure(RuntimeError(error))
            exit_if_sticky(self.health)
        elif any(r.error is None for r in results):
            self.health.record_success()

    def segment(self, cases: list[RunnerCase]) -> list[RunnerResult]:
        """Segment preprocessed cases; BentoML merges concurrent calls into one list.

        Cases for different model versions (during a promotion) run in separate passes.
        """
        groups: dict[tuple[str | None, str | None], list[int]] = {}
        for index, case in enumerate(cases):
            groups.setdefault((case.model_name, case.model_version), []).append(index)
        results: list[RunnerResult | None] = [None] * len(cases)
        for (name, version), indices in groups.items():
            try:
                engine = self.engine_for(name, version)
            except ModelNotAvailableError as exc:
                for index in indices:
                    results[index] = RunnerResult(error=str(exc), error_kind="runner")
                    with bound_request_id(cases[index].request_id):
                        logger.warning("runner case failed: %s", exc)
                continue
            answered = engine.segment([cases[i] for i in indices])
            self._record_engine_health(answered)
            for index, result in zip(indices, answered):
                results[index] = result
        return [result for result in results if result is not None]

    def describe(self) -> dict[str, Any]:
        """The model versions loaded, the latest used first, and the engine."""
        engine = self.engine
        return {
            "model_name": self.model.name,
            "model_version": engine.model_version,
            "loaded_versions": [f"{n}:{v}" for n, v in reversed(self._engines)],
            "engine": engine.tile_runner.name,
            "providers": list(engine.tile_runner.providers),
            "precision": engine.tile_runner.precision,
        }


def build_runner_service(settings: Settings, *, standalone: bool = False) -> Any:
    """The BentoML service ``cerebrascan-runner``, bound to the process's settings.

    Called once, by the entry module (``service.py``) with its one :class:`Settings`: the
    front links the result with ``bentoml.depends``, and under ``bentoml serve`` the runner's
    own process imports that entry module too, so each process builds its settings once and
    hands them down here. BentoML's decorators need the batching settings when the class is
    made (workers, batch size, latency budget), and it instantiates the class without
    arguments, so both are bound here rather than read from a module-level global.

    Args:
        settings: the process's settings (``batching`` configures the service and its API).
        standalone: the service is deployed on its own (``runner.py``, reached at
            ``batching.runner_url``): every route but the health checks and ``/metrics`` then
            needs ``batching.runner_token`` (:class:`RunnerTokenMiddleware`).

    Returns:
        The ``bentoml.Service`` of :class:`SegmentationRunnerService`.

    Raises:
        ValueError: ``standalone`` without ``batching.runner_token``.
    """
    batching = settings.batching
    if standalone and batching.runner_token is None:
        raise ValueError(
            "a runner service deployed on its own needs batching.runner_token "
            "(CEREBRASCAN_BATCHING__RUNNER_TOKEN), the secret its front sends"
        )

    @bentoml.service(
        name="cerebrascan-runner",
        workers=batching.workers,
        traffic={"timeout": RUNNER_CALL_TIMEOUT_S, "max_concurrency": 64},
    )
    class BoundRunnerService(SegmentationRunnerService):
        """:class:`SegmentationRunnerService` with this process's settings, as BentoML serves it."""

        def __init__(self) -> None:
            super().__init__(settings)

        segment = bentoml.api(
            batchable=True,
            max_batch_size=batching.max_batch_size,
            max_latency_ms=batching.max_latency_ms,
        )(SegmentationRunnerService.segment)
        describe = bentoml.api(SegmentationRunnerService.describe)
        check_version = bentoml.api(SegmentationRunnerService.check_version)

    if standalone and batching.runner_token is not None:
        # bentoml.service made the class a Service; mypy ignores class decorators
        BoundRunnerService.add_asgi_middleware(  # type: ignore[attr-defined]
            RunnerTokenMiddleware, token=batching.runner_token.get_secret_value()
        )
    return BoundRunnerService


def runner_service_client(settings: Settings) -> Any:
    """The front's client of a runner service deployed on its own (``batching.runner_url``).

    BentoML's HTTP client for a dependency at a URL (what ``bentoml.depends(url=...)``
    builds), with the runner service's API for typed answers, JSON on the wire (the runner's
    main server refuses pickles, and nothing from the network is ever unpickled) and
    ``batching.runner_token`` as ``Authorization: Bearer``. It does not wait for the runner at
    start: the first case does, and fails alone if the runner is not there.

    Raises:
        ValueError: ``batching.runner_url`` or ``batching.runner_token`` is unset.
    """
    batching = settings.batching
    if batching.runner_url is None or batching.runner_token is None:
        raise ValueError("batching.runner_url and batching.runner_token must both be set")
    # BentoML's public SyncHTTPClient takes no service (it would answer plain dicts and send
    # models it cannot encode); this is the class bentoml.depends(url=..., on=...) builds in
    # its RemoteProxy, which in turn takes no token.
    from _bentoml_impl.client.http import SyncHTTPClient

    return SyncHTTPClient(
        batching.runner_url,
        service=build_runner_service(settings),
        media_type="application/json",
        token=batching.runner_token.get_secret_value(),
        timeout=RUNNER_CALL_TIMEOUT_S,
        server_ready_timeout=0,
    )


def connection_dropped(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection to the runner service went away under a call (so
    the call may be retried), rather than an answer or a failure of the runner itself.

    aiohttp reports a connection that closed before the response body was read as a bare
    ``RuntimeError("Connection closed.")`` (seen once in a 10-minute 8-client soak, where it
    became a 500), not as one of its client errors.
    """
    if isinstance(
        exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | httpx.TransportError
    ):
        return True
    return type(exc) is RuntimeError and str(exc) == "Connection closed."


class RemoteSegmentationRunner:
    """The front service's view of the runner service, a
    :class:`runners.protocol.SegmentationRunner` (whole volumes only: tiles never cross).

    Args:
        service: the ``bentoml.depends`` handle of the runner service
            (:func:`build_runner_service`; a remote proxy under ``bentoml serve``, the local
            instance in-process).
        spec: the network's contract.
        model_name: the registry model the front serves.
        model_version: its version (the runner service loads it if needed).
        volume_dtype: dtype of the volume on the wire (``batching.volume_dtype``).
        probability_dtype: dtype of the probabilities on the way back
            (``batching.probability_dtype``).
        engine: the runner service's engine (``runner.engine``).
        providers: its execution providers as configured; updated from every answer.
        precision: the precision asked for; updated from every answer (the runner's guard may
            fall back to fp32).
    """

    def __init__(
        self,
        service: Any,
        spec: ModelSpec,
        *,
        model_name: str,
        model_version: str,
        volume_dtype: str,
        probability_dtype: Literal["float16", "float32"] = "float16",
        engine: str,
        providers: list[str],
        precision: str,
    ) -> None:
        self.service = service
        self.spec = spec
        self.model_name = model_name
        self.model_version = model_version
        self.volume_dtype = np.dtype(volume_dtype)
        self.probability_dtype = probability_dtype
        self.name = f"{engine} (runner service)"
        self.providers = providers
        self.precision = precision
        self.decision = PrecisionDecision(precision, precision)

    def runner_case(
        self,
        volume: npt.NDArray[np.float32],
        *,
        mirror_tta: bool,
        tta_disagreement: bool = False,
    ) -> RunnerCase:
        """What :meth:`predict` sends for ``volume``, with the request id bound in this context
        (None when there is none or it is not a plain token).

        Args:
            volume: the preprocessed (channels, x, y, z) volume on the network grid.
            mirror_tta: average mirror flips.
            tta_disagreement: also return the flips' disagreement (with mirror TTA only).

        Returns:
            The :class:`RunnerCase`, its volume in the wire dtype.
        """
        return RunnerCase(
            volume=np.ascontiguousarray(volume, dtype=self.volume_dtype),
            mirror_tta=mirror_tta,
            tta_disagreement=tta_disagreement and mirror_tta,
            output="logits" if self.spec.preprocessing == "nnunet" else "probabilities",
            probability_dtype=self.probability_dtype,
            model_name=self.model_name,
            model_version=self.model_version,
            request_id=forwardable_request_id(),
        )

    def check_engine(self) -> None:
        """Have the runner service load this version and run the reference tile through it
        (a promotion, before its alias moves); the version stays loaded there.

        Raises:
            EngineCheckError: the runner service refused the version (the reason), or cannot
                be reached.
        """
        try:
            answer = self.service.check_version(
                model_name=self.model_name, model_version=self.model_version
            )
        except (aiohttp.ClientConnectionError, httpx.TransportError) as exc:
            raise EngineCheckError(
                f"the runner service cannot be reached to check version {self.model_version} "
                f"({type(exc).__name__})"
            ) from exc
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            reason = answer.get("error") if isinstance(answer, dict) else repr(answer)[:200]
            raise EngineCheckError(f"the runner service refused the version: {reason}")

    def predict(
        self,
        volume: npt.NDArray[np.float32],
        *,
        mirror_tta: bool,
        tta_disagreement: bool = False,
    ) -> RunnerPrediction:
        """Send one preprocessed volume to the runner service and wait for its arrays.

        Raises:
            InputError: the runner found the volume unusable (422).
            RunnerUnavailableError: the runner service cannot be reached, even on a retry (503).
            RuntimeError: the network failed on this case.
        """
        wants_logits = self.spec.preprocessing == "nnunet"
        case = self.runner_case(volume, mirror_tta=mirror_tta, tta_disagreement=tta_disagreement)
        clock = time.perf_counter()
        try:
            (result,) = self.service.segment([case])
        except Exception as exc:
            if not connection_dropped(exc):
                raise
            # a pooled keep-alive connection the runner closed just as it was reused
            # ("Server disconnected"); segmenting is idempotent, so one retry is safe
            logger.warning("runner service connection dropped (%s); retrying the case once", exc)
            try:
                (result,) = self.service.segment([case])
            except Exception as again:
                if not connection_dropped(again):
                    raise
                # not started yet, restarting or gone: a clean 503 the client may retry
                raise RunnerUnavailableError(
                    f"the runner service cannot be reached ({type(again).__name__}); "
                    "the study was not analysed, retry shortly"
                ) from again
        round_trip_ms = (time.perf_counter() - clock) * 1000
        if isinstance(result, dict):  # a client without the pydantic type gives plain data
            result = RunnerResult.model_validate(result)
        received = sum(
            array.nbytes
            for array in (result.probabilities, result.logits, result.tta_disagreement)
            if array is not None
        )
        # the boundary's cost: round trip minus the runner's own work (and any queueing for a
        # batch, which is not transfer: compare with batch_cases == 1 for the transfer alone)
        logger.info(
            "runner round trip %.0f ms, runner work %.0f ms, overhead %.0f ms, "
            "sent %.1f MB, received %.1f MB, batch of %d",
            round_trip_ms,
            result.runner_ms,
            round_trip_ms - result.runner_ms,
            case.volume.nbytes / 1e6,
            received / 1e6,
            result.batch_cases,
        )
        if result.engine:
            self.name = f"{result.engine} (runner service)"
        self.providers = list(result.providers) or self.providers
        if result.precision != self.precision or result.precision_note:
            self.decision = PrecisionDecision(
                self.decision.requested, result.precision, note=result.precision_note
            )
            self.precision = result.precision
        if result.error is not None:
            if result.error_kind == "input":
                raise InputError(f"runner refused the preprocessed case: {result.error}")
            raise RuntimeError(f"runner service failed on this case: {result.error}")
        disagreement = (
            np.asarray(result.tta_disagreement, dtype=np.float32)
            if result.tta_disagreement is not None
            else None
        )
        if wants_logits:
            logits = np.asarray(result.logits, dtype=np.float32)
            return RunnerPrediction(
                probabilities=activate(logits, self.spec.output_kind),
                tta_disagreement=disagreement,
                logits=logits,
            )
        return RunnerPrediction(
            probabilities=np.asarray(result.probabilities, dtype=np.float32),
            tta_disagreement=disagreement,
        )


def remote_runner_factory(
    service: Any, settings: Settings
) -> Callable[[ResolvedModel], RemoteSegmentationRunner]:
    """What the front service gives :class:`AnalysisPipeline` to reach the runner service.

    Args:
        service: the ``bentoml.depends`` handle of the runner service
            (:func:`build_runner_service`).
        settings: the front's settings (wire dtype, engine, providers, precision).
    """

    def build(model: ResolvedModel) -> RemoteSegmentationRunner:
        return RemoteSegmentationRunner(
            service,
            model.spec,
            model_name=model.name,
            model_version=model.version,
            volume_dtype=settings.batching.volume_dtype,
            probability_dtype=settings.batching.probability_dtype,
            engine=settings.runner.engine,
            providers=list(settings.runner.providers),
            precision=settings.runner.precision,
        )

    return build


def front_readiness(
    settings: Settings, runner: Callable[[], Any | None], runner_service: Any | None
) -> Callable[[], Probe]:
    """The front's ``/readyz`` probe: can the runner answer now?

    - in-process engine (``batching.remote_runner`` off): the reference tile through it,
      cached for ``health.readiness_probe_ttl_s``;
    - the runner service beside the front: BentoML probes it (its ``/readyz`` is
      :meth:`SegmentationRunnerService.__is_ready__`); in-process (``to_asgi``, tests) that
      method is called directly;
    - a runner service at ``batching.runner_url``: its ``/readyz``, cached likewise.

    Args:
        settings: the front's settings.
        runner: returns the pipeline's runner in service (None before start-up).
        runner_service: the runner service handle, or None with an in-process engine.
    """
    ttl = settings.health.readiness_probe_ttl_s

    def check_in_process() -> None:
        current = runner()
        if current is None:
            raise EngineCheckError("the model is not loaded yet")
        check_reference_tile(current)

    def check_remote() -> None:
        if isinstance(runner_service, SegmentationRunnerService):
            runner_service.__is_ready__()  # raises HTTPException with the reason
            return
        is_ready = getattr(runner_service, "is_ready", None)
        if callable(is_ready) and not _sync_is_ready(is_ready):
            raise EngineCheckError(
                f"the runner service at {settings.batching.runner_url} is not ready"
            )

    if runner_service is None:
        return CachedProbe(check_in_process, ttl)
    if settings.batching.runner_url is None and not isinstance(
        runner_service, SegmentationRunnerService
    ):
        # bentoml.depends under `bentoml serve`: BentoML's own readyz asks the runner's readyz
        return lambda: Probe(True, None, time.monotonic())
    return CachedProbe(check_remote, ttl)


def _sync_is_ready(is_ready: Callable[..., Any]) -> bool:
    """``is_ready(5)`` of BentoML's sync HTTP client (a ``/readyz`` GET within 5 s); a
    connection error is a no."""
    try:
        return bool(is_ready(5))
    except (httpx.TransportError, OSError):
        return False
