"""Settings of the report writers (``Settings.report``, env ``CEREBRASCAN_REPORT__*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator


class ReportSettings(BaseModel):
    """Which writer composes a report's narrative, and the LLM endpoint it may call.

    The LLM endpoint is any OpenAI-compatible server (``vllm serve``, llama.cpp's server);
    see ``docs/report.md``.
    """

    model_config = {"extra": "forbid"}

    writer: Literal["template", "llm"] = Field(
        default="template",
        description="template: deterministic, no model (default). llm: narrative from the "
        "endpoint below, checked against the findings, template on any failure.",
    )
    llm_base_url: str | None = Field(
        default=None,
        description="Base URL of the OpenAI-compatible API, e.g. http://vllm:8000/v1; "
        "unset: the llm writer falls back to the template.",
    )
    llm_model: str = Field(
        default="", description="Model name sent to the endpoint (as `vllm serve` names it)."
    )
    llm_api_key: SecretStr | None = Field(
        default=None, description="Bearer token of the endpoint (vllm serve --api-key)."
    )
    llm_timeout_s: float = Field(
        default=30.0, gt=0.0, le=600.0, description="Whole LLM request, connect to last byte."
    )
    llm_max_tokens: int = Field(default=512, ge=16, le=8192, description="Completion budget.")
    llm_temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling.")
    llm_response_format: Literal["json_schema", "json_object"] = Field(
        default="json_schema",
        description="json_schema: OpenAI's structured-output form (vLLM, recent llama.cpp). "
        "json_object: {'type': 'json_object', 'schema': ...} (older llama-cpp-python).",
    )

    @field_validator("llm_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"llm_base_url {value[:80]!r} must start with http:// or https://")
        return value.rstrip("/") if value else value
