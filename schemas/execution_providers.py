"""ONNX Runtime execution providers a setting may name: the runner's and brain extraction's."""

from __future__ import annotations

from collections.abc import Sequence

ORT_PROVIDERS = (
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
)


def check_execution_providers(
    value: list[str], allowed: Sequence[str] = ORT_PROVIDERS
) -> list[str]:
    """``value`` if it names at least one provider and only ``allowed`` ones.

    Raises:
        ValueError: the list is empty or names a provider outside ``allowed`` (both named).
    """
    if not value:
        raise ValueError("providers must name at least one ONNX Runtime execution provider")
    unknown = [p for p in value if p not in allowed]
    if unknown:
        raise ValueError(f"unknown execution provider(s) {unknown}; choose from {tuple(allowed)}")
    return value
