"""The runner service deployed on its own: ``bentoml serve runner:CerebraScanRunner``.

For a front and a runner in separate deployments (docs/deploy.md, Kubernetes): the front sets
``batching.runner_url`` to this service's URL and both share ``batching.runner_token``, which
this service requires on every route but ``/livez``, ``/readyz``, ``/healthz`` and ``/metrics``.
Settings are read once here, as ``service.py`` reads them for the front; the network, tiles,
mirror TTA and cross-case batching are those of :mod:`cerebrascan.serving.runner_service`.
"""

from __future__ import annotations

import logging

from cerebrascan.serving.logs import configure_logging
from cerebrascan.serving.runner_service import build_runner_service
from cerebrascan.settings import Settings

SETTINGS = Settings()
for _name in ("cerebrascan", "runners"):
    logging.getLogger(_name).setLevel(logging.INFO)
configure_logging(SETTINGS.logging)

CerebraScanRunner = build_runner_service(SETTINGS, standalone=True)
