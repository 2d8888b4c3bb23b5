"""The held-out record of a model folder's reduced precisions (``precisions.json``).

Written by ``cerebrascan pipeline precisions`` (:mod:`cerebrascan.training.precisions`), read by
the precision guard when an engine starts (:mod:`runners.precision_record`): bf16 or int8 serve
only when this record, measured on the same ``model.onnx``, says that precision kept the
held-out cases' labels (issue 21).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

PRECISION_RECORD_SCHEMA = 1
RECORDED_PRECISIONS = ("bf16", "int8", "fp16")


class HeldOutSet(BaseModel):
    """Which held-out cases the record was measured on."""

    model_config = {"extra": "forbid"}

    cases: int = Field(ge=1, description="Number of held-out cases segmented.")
    seed: int | None = Field(
        default=None, description="Phantom cohort seed of the cases (None: not phantoms)."
    )
    source: str = Field(description="Where the cases came from (folder, cohort, case ids).")


class Fp32Figures(BaseModel):
    """The fp32 reference (ONNX Runtime on the CPU, the served fp32 path) on the same cases."""

    model_config = {"extra": "forbid"}

    dice_vs_truth: dict[str, float] = Field(
        description="Mean Dice per BraTS region (WT/TC/ET) against the cases' true labels."
    )


class ReferenceTileFigures(BaseModel):
    """The guard's reference-tile comparison with ONNX Runtime fp32 when the record was made."""

    model_config = {"extra": "forbid"}

    agreement: float | None = Field(
        default=None, description="Fraction of the tile's voxels whose decision matched fp32."
    )
    max_probability_difference: float | None = Field(
        default=None, description="Largest |p - p_fp32| over the tile (reported, not decisive)."
    )


class PrecisionEntry(BaseModel):
    """One reduced precision's held-out check."""

    model_config = {"extra": "forbid"}

    engine: str = Field(description="The engine that ran it (``openvino``).")
    passed: bool = Field(description="Every region's Dice change within the bound.")
    max_dice_change: float | None = Field(
        default=None, description="The bound on ``1 - Dice`` per region the check used."
    )
    dice_change: dict[str, float] = Field(
        default_factory=dict,
        description="Per region, the worst ``1 - Dice(candidate, fp32)`` over the cases.",
    )
    dice_vs_truth: dict[str, float] = Field(
        default_factory=dict, description="Mean Dice per region against the true labels."
    )
    reference_tile: ReferenceTileFigures = Field(default_factory=ReferenceTileFigures)
    cpu: str = Field(default="", description="The CPU it was measured on.")
    openvino: str | None = Field(default=None, description="OpenVINO version, if it ran.")
    note: str | None = Field(default=None, description="Why it failed (None when it passed).")
    model: str | None = Field(
        default=None,
        description="A separate network file in the folder (int8: ``model.int8.xml``).",
    )
    model_sha256: str | None = Field(
        default=None,
        description="SHA-256 of that file's weights (``.bin``): a re-quantised network voids "
        "the entry.",
    )
    calibration: dict[str, Any] | None = Field(
        default=None, description="int8: the calibration record of the quantisation."
    )


class PrecisionRecord(BaseModel):
    """``precisions.json``: held-out checks of a model folder's reduced precisions."""

    model_config = {"extra": "forbid", "populate_by_name": True}

    schema_version: Literal[1] = Field(
        default=1, alias="schema", description="Format version (PRECISION_RECORD_SCHEMA)."
    )
    onnx_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the model.onnx measured; another network voids the record.",
    )
    held_out: HeldOutSet
    fp32: Fp32Figures
    precisions: dict[str, PrecisionEntry] = Field(
        default_factory=dict, description="Per reduced precision (bf16, int8), its check."
    )

    @field_validator("precisions")
    @classmethod
    def _known_precisions(cls, value: dict[str, PrecisionEntry]) -> dict[str, PrecisionEntry]:
        unknown = sorted(set(value) - set(RECORDED_PRECISIONS))
        if unknown:
            raise ValueError(
                f"precisions {unknown} are not reduced precisions ({list(RECORDED_PRECISIONS)})"
            )
        return value
