"""The preprocessing and output contract stored beside every exported segmentation network."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
BRATS_LABELS: dict[str, int] = {"NETC": 1, "SNFH": 2, "ET": 3}
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


class ModelSpec(BaseModel):
    """Everything a runner needs to reproduce the training-time preprocessing of a network.

    The network takes ``(batch, len(modalities), *patch_size)`` float32 input, z-scored per
    channel inside the brain, on a grid of ``target_spacing_mm`` (array axis order), and returns
    ``(batch, len(output_labels), *patch_size)`` logits; softmax over axis 1, then argmax gives
    an index into ``output_labels`` (BraTS label values).
    """

    model_config = {"extra": "forbid"}

    format_version: Literal[1] = 1
    architecture: str = Field(description="Network family, e.g. PlainConvUNet.")
    modalities: list[str] = Field(default_factory=lambda: list(MODALITIES))
    target_spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    normalisation: Literal["zscore_nonzero"] = "zscore_nonzero"
    output_kind: Literal["softmax_labels"] = "softmax_labels"
    output_labels: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    input_name: str = "image"
    output_name: str = "logits"
    mirror_axes: tuple[int, ...] = (0, 1, 2)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if any(s <= 0 for s in self.target_spacing_mm):
            raise ValueError(f"target_spacing_mm must be positive, got {self.target_spacing_mm}")
        if any(p < 8 for p in self.patch_size):
            raise ValueError(f"patch_size entries must be >= 8, got {self.patch_size}")
        if self.output_labels[0] != 0:
            raise ValueError(
                f"output_labels must start with background 0, got {self.output_labels}"
            )
        return self
