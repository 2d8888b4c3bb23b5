"""Refuse to serve without API keys on an address other machines can reach.

With ``auth.enabled`` false every route (``/admin`` included) is open, which is meant for a
developer's own machine. :func:`check_exposure` refuses a start where that open server would
listen on a non-loopback address: the HTTP host ``bentoml serve --host`` (or ``BENTOML_HOST``)
binds, or ``grpc.host`` when gRPC is on; ``auth.allow_open_network`` lets an operator say the
network is trusted.
"""

from __future__ import annotations

import ipaddress
import logging

from cerebrascan.serving.settings import AuthSettings, GrpcSettings

logger = logging.getLogger(__name__)

BENTOML_DEFAULT_HOST = "0.0.0.0"
"""What ``bentoml serve`` binds without ``--host`` (BentoML's default configuration)."""


class OpenNetworkError(RuntimeError):
    """The server would listen on a non-loopback address with API keys off."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or ``localhost``) is reachable from this machine only.

    A name other than ``localhost`` counts as reachable from elsewhere (it may resolve to
    anything); ``0.0.0.0`` and ``::`` (every interface) are not loopback.
    """
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serving_http_host() -> str | None:
    """The host ``bentoml serve`` is binding, read from its command line; None elsewhere.

    ``bentoml serve`` imports ``service.py`` inside its click command, before it binds the
    socket, so the command's ``host`` parameter (``--host`` or ``BENTOML_HOST``; BentoML's
    default when neither is given) is the address the HTTP server will listen on. Its worker
    processes and in-process tests run another command (or none): None.
    """
    import click

    context = click.get_current_context(silent=True)
    if context is None or "host" not in context.params or "bento" not in context.params:
        return None
    host = context.params["host"]
    if host:
        return str(host)
    # `bentoml serve --development` binds loopback without --host (bentoml_cli.serve)
    return "127.0.0.1" if context.params.get("development") else BENTOML_DEFAULT_HOST


def open_addresses(auth: AuthSettings, grpc: GrpcSettings, http_host: str | None) -> list[str]:
    """The non-loopback addresses an unauthenticated server would listen on.

    Args:
        auth: the ``auth`` settings (nothing is open when ``enabled``).
        grpc: the ``grpc`` settings (port 0: gRPC off).
        http_host: the HTTP host, or None when unknown (not checked then).
    """
    if auth.enabled:
        return []
    found = []
    if http_host is not None and not is_loopback(http_host):
        found.append(f"HTTP host {http_host!r}")
    if grpc.port != 0 and not is_loopback(grpc.host):
        found.append(f"grpc.host {grpc.host!r}")
    return found


def check_exposure(auth: AuthSettings, grpc: GrpcSettings, http_host: str | None) -> None:
    """Refuse a start with auth off on a non-loopback address (see :func:`open_addresses`).

    Raises:
        OpenNetworkError: such an address, unless ``auth.allow_open_network``; the message
            names the address and the settings that allow it.
    """
    found = open_addresses(auth, grpc, http_host)
    if not found:
        return
    if auth.allow_open_network:
        logger.warning(
            "serving without API keys on %s (auth.allow_open_network=true)", ", ".join(found)
        )
        return
    raise OpenNetworkError(
        f"refusing to start: auth.enabled is false and the server would listen on "
        f"{' and '.join(found)}, reachable from other machines. Turn API keys on "
        "(CEREBRASCAN_AUTH__ENABLED=true with auth.api_keys), bind 127.0.0.1 (--host, "
        "CEREBRASCAN_GRPC__HOST), or set CEREBRASCAN_AUTH__ALLOW_OPEN_NETWORK=true for a "
        "trusted network"
    )
