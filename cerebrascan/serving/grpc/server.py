"""The gRPC server of the Open Inference Protocol, sharing the front service's pipeline.

Implements ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata and ModelInfer of
``inference.GRPCInferenceService`` (the stubs generated in ``tritonclient.grpc``); the other
methods answer UNIMPLEMENTED. A ``ModelInfer`` decodes its tensors into a ``Study``
(:func:`cerebrascan.inputs.oip.decode_infer_request`, the checks NIfTI uploads get) and runs the
same :meth:`AnalysisPipeline.run` as ``POST /analyze``, so every analyzer and the study store
are shared; the label map comes back from the run's result.

Every call passes two interceptors: :class:`RequestIdInterceptor` binds a request id (the
client's ``x-request-id`` metadata when it is a plain token, else a new one) for the call's logs
and the runner service, and returns it in the trailing metadata; then
:class:`~cerebrascan.serving.grpc.auth.ApiKeyInterceptor` checks the API key when ``auth.enabled``.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import time
from collections.abc import Callable
from concurrent import futures
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio.to_thread
import grpc
import numpy as np
from pydantic import ValidationError
from tritonclient.grpc import service_pb2, service_pb2_grpc
from typing_extensions import override

from cerebrascan.errors import InputError, RunnerUnavailableError
from cerebrascan.inputs.oip import (
    FINDINGS_OUTPUT,
    INPUT_NAME,
    SEGMENTATION_OUTPUT,
    OipRequestError,
    decode_infer_request,
    serialize_bytes_elements,
)
from cerebrascan.serving.grpc.auth import (
    ApiKeyInterceptor,
    grpc_caller,
    metadata_headers,
    wrap_behaviour,
)
from cerebrascan.serving.limits import AnalysisLimiter, ServerBusyError
from cerebrascan.serving.logs import (
    REQUEST_ID_HEADER,
    bound_request_id,
    request_id_from,
)
from cerebrascan.serving.settings import GrpcSettings
from cerebrascan.settings import Settings
from cerebrascan.store.audit import AuditEntry, AuditTrail, patient_pseudonym
from schemas.analysis import RESEARCH_USE_NOTICE, AnalyzeOptions, research_notice_for

if TYPE_CHECKING:
    from cerebrascan.pipeline import AnalysisPipeline

logger = logging.getLogger(__name__)

PipelineGetter = Callable[[], "AnalysisPipeline | None"]
NOTICE_HEADER = "x-research-notice"
"""Trailing metadata of every gRPC answer: the served model's research-use notice."""
Result = TypeVar("Result")


def _status_of(error: InputError) -> grpc.StatusCode:
    """The gRPC status of an :class:`InputError` (its HTTP status, mapped)."""
    if error.status_code == 404:
        return grpc.StatusCode.NOT_FOUND
    if error.status_code in (413, 429):  # too large, or every analysis slot taken
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.INVALID_ARGUMENT


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the call with ``code`` and ``details`` (gRPC's ``abort`` raises, never returns)."""
    context.abort(code, details)
    raise AssertionError("grpc.ServicerContext.abort returned instead of raising")


def _with_request_id(request_id: str | None, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` with ``request_id`` bound in this thread's context."""
    with bound_request_id(request_id):
        return function(*args)


class RequestIdInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Bind a request id to each call (as :class:`RequestIdMiddleware` does for HTTP).

    The id is the client's ``x-request-id`` metadata when it is a plain token, else a new one;
    it is bound while the method runs (so its log lines and the runner service's carry it) and
    returned in the trailing metadata ``x-request-id``, refusals included. A response-streaming
    method would be bound only until it returns its iterator (no such method is implemented).
    With ``notice``, every answer's trailing metadata also carries ``x-research-notice``: the
    served model's research-use notice (what it was trained on).

    Args:
        notice: returns the notice of the model being served.
    """

    def __init__(self, notice: Callable[[], str] | None = None) -> None:
        self.notice = notice

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        request_id = request_id_from(metadata_headers(handler_call_details.invocation_metadata))

        def wrap(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def with_request_id(request: Any, context: grpc.ServicerContext) -> Any:
                trailing = [(REQUEST_ID_HEADER, request_id)]
                if self.notice is not None:
                    trailing.append((NOTICE_HEADER, self.notice()))
                context.set_trailing_metadata(tuple(trailing))
                return _with_request_id(request_id, behaviour, request, context)

            return with_request_id

        return wrap_behaviour(handler, wrap)


class OipServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """OIP methods over one :class:`AnalysisPipeline`.

    Args:
        pipeline: returns the pipeline in service (None while it is loading).
        model_name: the name clients use for the segmentation model.
        loop: the BentoML service's event loop, when there is one: studies then run in its
            AnyIO worker threads, where BentoML's dependency clients (the runner service) work.
        max_voxels: the largest grid a request may send (``limits.max_voxels``).
        limiter: the analysis slots shared with HTTP ``/analyze*`` (``bounds``); default:
            one of its own, ``bounds`` defaults.
        request_deadline_s: a study's whole-request deadline (``bounds.request_deadline_s``).
    """

    def __init__(
        self,
        pipeline: PipelineGetter,
        model_name: str,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        max_voxels: int,
        limiter: AnalysisLimiter | None = None,
        request_deadline_s: float = 540.0,
    ) -> None:
        self.limiter = limiter if limiter is not None else AnalysisLimiter(4, 2.0)
        self.request_deadline_s = request_deadline_s
        self.pipeline = pipeline
        self.model_name = model_name
        self.max_voxels = max_voxels
        self.loop = loop

    def _in_service_thread(self, function: Callable[..., Result], *args: Any) -> Result:
        """``function(*args)`` in an AnyIO worker thread of the service's loop (if any).

        The call's context (its request id) goes along: ``run_coroutine_threadsafe`` starts the
        task in a copy of this thread's context and AnyIO runs the worker in the task's.
        """
        if self.loop is None:
            return function(*args)
        call = functools.partial(anyio.to_thread.run_sync, functools.partial(function, *args))
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result()

    @override
    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    @override
    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.pipeline() is not None)

    @override
    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        from cerebrascan import __version__

        return service_pb2.ServerMetadataResponse(
            name="cerebrascan", version=str(__version__), extensions=[]
        )

    @override
    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        pipeline = self.pipeline()
        ready = (
            pipeline is not None
            and request.name == self.model_name
            and request.version in ("", pipeline.model.version)
        )
        return service_pb2.ModelReadyResponse(ready=ready)

    @override
    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        pipeline = self._pipeline_for(request.name, request.version, context)
        channels = len(pipeline.model.spec.modalities)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=self.model_name,
            versions=[pipeline.model.version],
            platform=f"cerebrascan_{pipeline.runner.name}",
            inputs=[tensor(name=INPUT_NAME, datatype="FP32", shape=[1, channels, -1, -1, -1])],
            outputs=[
                tensor(name=SEGMENTATION_OUTPUT, datatype="UINT8", shape=[1, -1, -1, -1]),
                tensor(name=FINDINGS_OUTPUT, datatype="BYTES", shape=[1]),
            ],
        )

    @override
    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        pipeline = self._pipeline_for(request.model_name, request.model_version, context)
        deadline = time.monotonic() + self.request_deadline_s
        made: list[tuple[str, str | None]] = []
        code = grpc.StatusCode.UNKNOWN
        try:
            # one count of analyses with HTTP /analyze*: beyond it RESOURCE_EXHAUSTED
            with self.limiter.slot("gRPC ModelInfer"):
                answer = self._infer(pipeline, request, context, deadline, made)
            code = grpc.StatusCode.OK
            return answer
        except ServerBusyError as exc:
            _abort(context, _status_of(exc), str(exc))
        finally:
            if code is not grpc.StatusCode.OK:
                code = _aborted_code(context)
            audit_grpc_infer(pipeline, made[0] if made else None, code)

    def _infer(
        self,
        pipeline: AnalysisPipeline,
        request: Any,
        context: grpc.ServicerContext,
        deadline: float,
        made: list[tuple[str, str | None]],
    ) -> Any:
        """One ``ModelInfer`` holding an analysis slot; the study it made (and its stored
        patient key) is appended to ``made`` for the audit trail."""
        # the model this study is decoded for serves all of it, even if a promotion lands now
        with pipeline.serving_for_study() as serving:
            spec = serving[0].spec
            try:
                clock = time.perf_counter()
                decoded = decode_infer_request(
                    request, tuple(spec.modalities), max_voxels=self.max_voxels
                )
                options = AnalyzeOptions.model_validate(decoded.options)
                decode_ms = (time.perf_counter() - clock) * 1000
            except OipRequestError as exc:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except ValidationError as exc:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"parameter 'options': {exc}")
            except InputError as exc:
                _abort(context, _status_of(exc), str(exc))
            try:
                analysis = self._in_service_thread(
                    functools.partial(
                        pipeline.run,
                        serving=serving,
                        input_timings_ms={"decode": decode_ms},
                        deadline=deadline,
                        tenant=grpc_caller().tenant,
                    ),
                    decoded.study,
                    options,
                )
            except InputError as exc:
                _abort(context, _status_of(exc), str(exc))
            except RunnerUnavailableError as exc:
                _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        response = analysis.response
        patient_id = options.patient_id
        made.append(
            (response.study_id, pipeline.records.patient_key(patient_id) if patient_id else None)
        )
        outputs = []
        raw_outputs = []
        output_tensor = service_pb2.ModelInferResponse.InferOutputTensor
        for name in decoded.outputs:
            if name == SEGMENTATION_OUTPUT:
                labels = analysis.labels
                outputs.append(output_tensor(name=name, datatype="UINT8", shape=[1, *labels.shape]))
                raw_outputs.append(np.ascontiguousarray(labels).tobytes())
            else:
                findings = response.model_dump_json().encode()
                outputs.append(output_tensor(name=name, datatype="BYTES", shape=[1]))
                raw_outputs.append(serialize_bytes_elements([findings]))
        return service_pb2.ModelInferResponse(
            model_name=self.model_name,
            model_version=response.model.version,
            id=request.id,
            parameters={"notice": service_pb2.InferParameter(string_param=response.notice)},
            outputs=outputs,
            raw_output_contents=raw_outputs,
        )

    def _pipeline_for(
        self, name: str, version: str, context: grpc.ServicerContext
    ) -> AnalysisPipeline:
        """The pipeline, if ``name``/``version`` is the served model (else the call aborts)."""
        pipeline = self.pipeline()
        if pipeline is None:
            _abort(context, grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        if name != self.model_name:
            _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {name!r}; this server serves {self.model_name!r}",
            )
        if version not in ("", pipeline.model.version):
            _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"model {name!r} version {version!r} is not served "
                f"(serving version {pipeline.model.version})",
            )
        return pipeline


def _aborted_code(context: grpc.ServicerContext) -> grpc.StatusCode:
    """The status a call ended with (``context.abort`` set it; UNKNOWN for an exception)."""
    code = context.code() if hasattr(context, "code") else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def audit_grpc_infer(
    pipeline: AnalysisPipeline,
    made: tuple[str, str | None] | None,
    code: grpc.StatusCode,
) -> None:
    """One audit record of a ``ModelInfer`` (an analysis: patient-linked) in the study store;
    ``status`` holds the gRPC code's number. A failed write is logged, never raised."""
    caller = grpc_caller()
    entry = AuditEntry(
        at=datetime.now(UTC),
        tenant=caller.tenant,
        key_name=caller.key_name,
        action="analyze",
        route="gRPC ModelInfer",
        study_id=made[0] if made else None,
        patient=patient_pseudonym(made[1]) if made else None,
        status=int(code.value[0]),
    )
    try:
        AuditTrail(pipeline.records.engine).append(entry)
    except Exception:  # the answer is decided: a failed audit write is logged loudly instead
        logger.exception("audit record of gRPC ModelInfer could not be written")


def start_oip_server(
    settings: Settings, pipeline: PipelineGetter, *, limiter: AnalysisLimiter | None = None
) -> grpc.Server | None:
    """Start the OIP gRPC server on ``settings.grpc.port`` in its own threads.

    Calls need an API key when ``settings.auth.enabled`` (:mod:`cerebrascan.serving.grpc.auth`) and
    carry a request id (:class:`RequestIdInterceptor`). Several workers of the front service
    may share the port (SO_REUSEPORT, gRPC's default on Linux). Port 0 disables the server.
    Called from the service's ``__init__`` (inside its event loop), studies run in that loop's
    worker threads, as HTTP requests do.

    Args:
        settings: the process's settings.
        pipeline: returns the pipeline in service (None while it is loading).
        limiter: the analysis slots shared with HTTP ``/analyze*`` (one per worker); default:
            a limiter of this server's own from ``settings.bounds``.

    Returns:
        The started server (stopped at interpreter exit), or None when disabled or the port
        cannot be bound (logged; HTTP keeps serving).
    """
    config = settings.grpc
    if config.port == 0:
        logger.info("gRPC (Open Inference Protocol) disabled: grpc.port is 0")
        return None
    max_bytes = int(config.max_message_mb * 1024 * 1024)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="oip-grpc"),
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 1),
        ],
        # the request id first, so a refused call's log line and trailing metadata carry it
        interceptors=[
            RequestIdInterceptor(notice=lambda: served_notice(pipeline())),
            ApiKeyInterceptor(settings.auth),
        ],
    )
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # not inside an event loop: run studies in the gRPC threads
        loop = None
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        OipServicer(
            pipeline,
            config.model_name,
            loop,
            max_voxels=settings.limits.max_voxels,
            limiter=limiter
            if limiter is not None
            else AnalysisLimiter(
                settings.bounds.max_concurrent_analyses, settings.bounds.queue_wait_s
            ),
            request_deadline_s=settings.bounds.request_deadline_s,
        ),
        server,
    )
    address = f"{config.host}:{config.port}"
    try:
        credentials = server_credentials(config)
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except OSError as exc:  # a TLS file that cannot be read: the operator must fix it
        raise RuntimeError(f"gRPC TLS: {exc}") from exc
    except RuntimeError as exc:
        logger.error("gRPC server not started: cannot bind %s (%s)", address, exc)
        return None
    if bound == 0:
        logger.error("gRPC server not started: cannot bind %s", address)
        return None
    server.start()
    atexit.register(server.stop, 2.0)
    logger.info(
        "gRPC (Open Inference Protocol) listening on %s (%s), API keys %s",
        address,
        "plaintext"
        if credentials is None
        else "TLS" + (", client certificates required" if config.tls_client_ca_file else ""),
        "required" if settings.auth.enabled else "not required (auth.enabled=false)",
    )
    return server


def served_notice(pipeline: AnalysisPipeline | None) -> str:
    """The research-use notice of the model ``pipeline`` serves (the project's notice while it
    is loading)."""
    if pipeline is None:
        return RESEARCH_USE_NOTICE
    model = pipeline.serving[0]
    return research_notice_for(model.name, model.version, model.training_data)


def server_credentials(config: GrpcSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from ``grpc.tls_cert_file`` / ``tls_key_file`` (and, for mutual TLS,
    ``tls_client_ca_file``), or None for plaintext.

    Raises:
        OSError: a file cannot be read.
    """
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    client_ca = None
    if config.tls_client_ca_file is not None:
        client_ca = config.tls_client_ca_file.read_bytes()
    return grpc.ssl_server_credentials(
        [(config.tls_key_file.read_bytes(), config.tls_cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
