"""gRPC server interceptor: API keys with roles on the Open Inference Protocol (``auth`` settings).

The same keys and roles as the HTTP routes (:mod:`cerebrascan.serving.http.auth`): a key comes in
the call metadata as ``authorization: Bearer <key>`` or ``x-api-key: <key>`` and is looked up in the
same :class:`~cerebrascan.serving.apikeys.KeyRing`. Each method needs a role by
:data:`METHOD_ROLES`: ``ServerLive`` and ``ServerReady`` are open (health checks, like
``/livez`` and ``/readyz``); the metadata, readiness and inference methods need ``reader``;
every other method, the repository, shared-memory, trace and log controls of the protocol
included, needs ``admin`` (so a method implemented later is closed until it is mapped, as an
unmapped HTTP route is). No or an unknown key: ``UNAUTHENTICATED``; a key whose role is too
low: ``PERMISSION_DENIED``; the message names what is missing, never the key.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from cerebrascan.serving.apikeys import KeyRing, role_allows
from cerebrascan.serving.http.auth import Caller, presented_key
from cerebrascan.serving.settings import DEFAULT_TENANT, ApiKeyEntry, AuthSettings, Role

logger = logging.getLogger(__name__)

OIP_SERVICE = "inference.GRPCInferenceService"

METHOD_ROLES: Mapping[str, Role | None] = {
    "ServerLive": None,
    "ServerReady": None,
    "ServerMetadata": "reader",
    "ModelReady": "reader",
    "ModelMetadata": "reader",
    "ModelInfer": "reader",
    "ModelStreamInfer": "reader",
    "ModelConfig": "reader",
    "ModelStatistics": "reader",
    "RepositoryIndex": "reader",
}
"""Role each OIP method needs (None: open). A method not listed needs ``admin``."""

_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "cerebrascan_grpc_caller", default=None
)


def grpc_caller() -> Caller:
    """The caller of the gRPC call this thread serves: its key's name, role and tenant (the
    default tenant's admin when auth is off, as over HTTP)."""
    caller = _caller.get()
    return caller if caller is not None else Caller(None, "admin", DEFAULT_TENANT)


MISSING_KEY = "missing API key: send metadata 'authorization: Bearer <key>' or 'x-api-key: <key>'"


def method_name(full_method: str) -> str:
    """``ModelInfer`` of ``/inference.GRPCInferenceService/ModelInfer``.

    Methods of another service keep their full path, so they never match a mapped OIP name.
    """
    prefix = f"/{OIP_SERVICE}/"
    return full_method[len(prefix) :] if full_method.startswith(prefix) else full_method


def metadata_headers(metadata: Any) -> list[tuple[bytes, bytes]]:
    """gRPC invocation metadata as the ``(name, value)`` byte pairs of an HTTP request."""
    pairs = []
    for name, value in metadata or ():
        raw = value if isinstance(value, bytes) else str(value).encode("latin-1", "replace")
        pairs.append((name.encode("latin-1", "replace"), raw))
    return pairs


def _refusal_handler(
    handler: grpc.RpcMethodHandler, method: str, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind that ends the call with ``code``.

    It leaves the request undeserialised: a refused ``ModelInfer`` of a 143 MB image is not
    parsed. The refusal is logged in the call's thread (with its request id), never the key.
    """

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        logger.info("gRPC %s refused (%s): %s", method, code.name, message)
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def wrap_behaviour(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> grpc.RpcMethodHandler:
    """A handler like ``handler`` (same kind and (de)serialisers) whose behaviour is
    ``wrap(behaviour)``."""
    serialisers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **serialisers)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **serialisers)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **serialisers)
    return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **serialisers)


def _logged(
    handler: grpc.RpcMethodHandler, log: Callable[[], None], entry: ApiKeyEntry | None = None
) -> grpc.RpcMethodHandler:
    """``handler`` that calls ``log()`` first, in the thread (and request context) of the call,
    and runs as ``entry``'s caller (:func:`grpc_caller`)."""
    caller = Caller(entry.name, entry.role, entry.tenant) if entry is not None else None

    def wrap(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def logged(request: Any, context: grpc.ServicerContext) -> Any:
            log()
            token = _caller.set(caller)
            try:
                return behaviour(request, context)
            finally:
                _caller.reset(token)

        return logged

    return wrap_behaviour(handler, wrap)


class ApiKeyInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuse a call without a suitable key before its request is read.

    Args:
        settings: the ``auth`` settings; when ``enabled`` is false every call passes.
        method_roles: the role each method needs (:data:`METHOD_ROLES`; a method missing from
            it needs ``admin``).
    """

    def __init__(
        self, settings: AuthSettings, method_roles: Mapping[str, Role | None] = METHOD_ROLES
    ) -> None:
        self.settings = settings
        self.keys = KeyRing(settings.api_keys)
        self.method_roles = method_roles

    def required_role(self, full_method: str) -> Role | None:
        """The role ``full_method`` needs, or None if it is open."""
        name = method_name(full_method)
        return self.method_roles[name] if name in self.method_roles else "admin"

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or not self.settings.enabled:
            return handler  # None: no such method, gRPC answers UNIMPLEMENTED
        full_method = handler_call_details.method
        needed = self.required_role(full_method)
        if needed is None:
            return handler
        name = method_name(full_method)
        key = presented_key(metadata_headers(handler_call_details.invocation_metadata))
        if key is None:
            return _refusal_handler(handler, name, grpc.StatusCode.UNAUTHENTICATED, MISSING_KEY)
        entry = self.keys.match(key)
        if entry is None:
            return _refusal_handler(
                handler, name, grpc.StatusCode.UNAUTHENTICATED, "invalid API key"
            )
        if not role_allows(entry.role, needed):
            return _refusal_handler(
                handler,
                name,
                grpc.StatusCode.PERMISSION_DENIED,
                f"API key {entry.name!r} has role {entry.role!r}; {name} needs role {needed!r}",
            )
        return _logged(
            handler,
            lambda: logger.debug("gRPC %s authorised by API key %r", name, entry.name),
            entry,
        )
