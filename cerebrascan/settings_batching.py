"""Settings of the runner service (cross-case batching) and of the gRPC (Open Inference
Protocol) endpoint; sub-models of :class:`cerebrascan.settings.Settings`.

Environment variables: ``CEREBRASCAN_BATCHING__<FIELD>`` and ``CEREBRASCAN_GRPC__<FIELD>``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class BatchingSettings(BaseModel):
    """The runner service: a BentoML service of its own that batches tiles across cases.

    With ``remote_runner`` on, ``bentoml serve service:CerebraScan`` starts two services: the
    front (decode, preprocess, postprocess, analyzers, store) and the runner (tiles, mirror TTA
    and the network), linked by ``bentoml.depends``. Each case crosses that boundary once.
    """

    model_config = {"extra": "forbid"}

    remote_runner: bool = Field(
        default=True,
        description="Run the network in its own BentoML service with a batchable API; False "
        "runs it in the front service's process (one case at a time).",
    )
    max_batch_size: int = Field(
        default=4, ge=1, le=64, description="Most cases one runner call may hold."
    )
    max_latency_ms: int = Field(
        default=120_000,
        ge=100,
        description="BentoML's latency budget for a batched runner call (queueing plus work).",
    )
    volume_dtype: Literal["float32", "float16"] = Field(
        default="float32",
        description="dtype of the preprocessed volume sent to the runner service. float16 "
        "halves the transfer but rounds the network input (see docs/serving.md).",
    )
    probability_dtype: Literal["float16", "float32"] = Field(
        default="float16",
        description="dtype of the class probabilities the runner service returns. float32 "
        "doubles the download and keeps the labels bit-identical to the in-process runner.",
    )
    workers: int = Field(default=1, ge=1, le=16, description="Runner service processes.")
    front_threads: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Threads of the front service's sync APIs: studies preprocessed, "
        "postprocessed and analysed at once per worker (BentoML's default is 1).",
    )


class GrpcSettings(BaseModel):
    """The Open Inference Protocol (KServe v2 / Triton) gRPC endpoint of the front service."""

    model_config = {"extra": "forbid"}

    port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="TCP port of the gRPC server; 0 disables it.",
    )
    host: str = Field(default="0.0.0.0", description="Address the gRPC server binds.")
    max_message_mb: float = Field(
        default=512.0, gt=0, description="Largest gRPC message accepted or sent, in MB."
    )
    threads: int = Field(default=4, ge=1, le=64, description="gRPC worker threads.")
    model_name: str = Field(
        default="cerebrascan-segmentation",
        description="Model name clients use in ModelInfer / ModelMetadata / ModelReady.",
    )
