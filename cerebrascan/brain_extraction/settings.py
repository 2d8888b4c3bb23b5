"""Settings of brain extraction (``brain_extraction``, env ``CEREBRASCAN_BRAIN_EXTRACTION__*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from schemas.execution_providers import check_execution_providers

#: Folder of the committed deepbet ONNX files (``models/brain_extraction/README.md``).
BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "brain_extraction"
#: TensorRT is not offered: the two small networks gain nothing from an engine build.
PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")


class BrainExtractionSettings(BaseModel):
    """How skull-on series are brain-extracted (deepbet on ONNX Runtime; brain_extraction.md)."""

    model_config = {"extra": "forbid"}

    bbox_model_path: Path = Field(
        default=BUNDLED_MODEL_DIR / "deepbet_bbox.onnx",
        description="ONNX file of deepbet's first stage (brain box on a 128^3 copy).",
    )
    model_path: Path = Field(
        default=BUNDLED_MODEL_DIR / "deepbet_brain.onnx",
        description="ONNX file of deepbet's second stage (brain mask inside the box).",
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers, in order of preference.",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime intra-op threads; 0 lets ORT decide."
    )
    threshold: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="Brain probability above which a voxel is brain (deepbet's default 0.5).",
    )
    input_size: int = Field(
        default=256,
        ge=96,
        le=256,
        multiple_of=32,
        description="Edge of the cube the brain box is resampled to for the second stage "
        "(deepbet: 256); smaller is faster and coarser (docs/brain_extraction.md has figures).",
    )

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        return check_execution_providers(value, PROVIDERS)
