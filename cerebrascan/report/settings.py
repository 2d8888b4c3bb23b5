"""Settings of the report writers (``Settings.report``, env ``CEREBRASCAN_REPORT__*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

OverrideRole = Literal["reader", "admin"]


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
        default=30.0,
        gt=0.0,
        le=600.0,
        description="Deadline of one report's LLM call, whole: waiting for a free slot, "
        "connect, send and the last byte of the answer; then the template is used.",
    )
    llm_max_concurrent: int = Field(
        default=2,
        ge=1,
        le=256,
        description="LLM calls in flight at once in one process; a report that finds no free "
        "slot before its deadline uses the template (fallback code busy).",
    )
    llm_override_roles: list[OverrideRole] = Field(
        default_factory=lambda: list[OverrideRole](["admin"]),
        description="Roles whose `?writer=llm` may override `writer: template` (cost and "
        "load); [] allows it to nobody. With auth.enabled=false every caller counts as admin.",
    )
    llm_max_tokens: int = Field(default=512, ge=16, le=8192, description="Completion budget.")
    llm_temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling.")
    llm_response_format: Literal["json_schema", "json_object"] = Field(
        default="json_schema",
        description="json_schema: OpenAI's structured-output form (vLLM, recent llama.cpp). "
        "json_object: {'type': 'json_object', 'schema': ...} (older llama-cpp-python).",
    )

    def may_override(self, requested: str | None, role: str | None) -> bool:
        """Whether a caller of ``role`` (None: unknown) may ask for writer ``requested``.

        Asking for the configured writer, or for the template (no model call), is always
        allowed; asking for the LLM when the template is configured needs a role in
        :attr:`llm_override_roles`.
        """
        if requested is None or requested == self.writer or requested == "template":
            return True
        return role is not None and role in self.llm_override_roles

    def keeps_supplied_text(self) -> bool:
        """Whether an LLM writer may ever run here, so a study's supplied text must be kept
        for it (``writer: llm``, or someone may override the template)."""
        return self.writer == "llm" or bool(self.llm_override_roles)

    @field_validator("llm_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"llm_base_url {value[:80]!r} must start with http:// or https://")
        return value.rstrip("/") if value else value
