"""Settings of the runner: which engine executes the network, on what device, at what precision.

Nested into :class:`cerebrascan.settings.Settings` as ``runner`` (env ``CEREBRASCAN_RUNNER__*``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from schemas.execution_providers import check_execution_providers


class RunnerSettings(BaseModel):
    """How the segmentation network is executed."""

    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers, in order of preference.",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime intra-op threads; 0 lets ORT decide."
    )
    intra_op_spinning: bool = Field(
        default=True,
        description="Let ONNX Runtime's idle intra-op threads spin (busy-wait) between "
        "operators: faster alone, but spinning threads take CPU from concurrent work (other "
        "cases' preprocessing and analyzers).",
    )
    tile_batch_size: int = Field(default=2, ge=1, le=64, description="Tiles per network call.")
    tile_step: float = Field(
        default=0.5, gt=0.0, le=1.0, description="Sliding-window step as a fraction of the patch."
    )
    mirror_tta: bool = Field(default=False, description="Mirror test-time augmentation.")
    min_component_ml: float = Field(
        default=0.05,
        ge=0.0,
        description="Tumour islands smaller than this (mL) are removed; 0 keeps every voxel.",
    )
    engine: Literal["onnxruntime", "torch", "tensorrt", "openvino", "auto"] = Field(
        default="onnxruntime",
        description="What executes the network: ONNX Runtime (with ``providers``), PyTorch "
        "(the model's safetensors weights), native TensorRT (an engine built from the ONNX), "
        "OpenVINO on the CPU (compiled from the ONNX), or auto: OpenVINO when device is cpu "
        "and the openvino package is installed, else ONNX Runtime.",
    )
    device: str = Field(
        default="cpu",
        pattern=r"^(cpu|cuda(:\d+)?)$",
        description="Device of the torch and TensorRT engines: cpu, cuda or cuda:N.",
    )
    precision: Literal["fp32", "fp16", "bf16", "int8", "auto"] = Field(
        default="fp32",
        description="Arithmetic of the network. Reduced precision is checked against fp32 on a "
        "reference tile when the engine is built and falls back to fp32 if they disagree. "
        "auto: bf16 with the openvino engine on a CPU that offers it (AMX / AVX-512 BF16), "
        "through the same guard as an explicit bf16 (fp32 with the reason when refused); fp32 "
        "with every other engine or CPU. "
        "openvino: fp32 or bf16 (a CPU with AVX-512 BF16 or AMX; refused at start elsewhere), "
        "or int8: the model folder's NNCF-quantised model.int8.xml (made by `cerebrascan "
        "pipeline quantize`); int8 is refused at start by every other engine.",
    )
    openvino_threads: int = Field(
        default=0,
        ge=0,
        description="openvino engine: inference threads; 0 lets OpenVINO use every core.",
    )
    openvino_streams: int = Field(
        default=1,
        ge=1,
        le=64,
        description="openvino engine: parallel inference streams (1: one call uses every "
        "thread, the latency setting).",
    )
    openvino_performance_hint: Literal["latency", "throughput"] = Field(
        default="latency",
        description="openvino engine: OpenVINO's performance hint for the CPU plugin.",
    )
    torch_compile: bool = Field(
        default=False, description="torch engine: compile the network with torch.compile."
    )
    cuda_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = Field(
        default="HEURISTIC",
        description="GPU engines: how cuDNN picks convolution algorithms (ONNX Runtime's CUDA "
        "provider; torch: EXHAUSTIVE turns on cudnn.benchmark). EXHAUSTIVE times every "
        "algorithm for each new input shape, again for the smaller last batch of each volume.",
    )
    allow_tf32: bool = Field(
        default=False,
        description="GPU engines at fp32: let Ampere/Hopper convolutions and matrix products "
        "use TF32 (10-bit mantissa; faster). Off, fp32 means fp32, as the parity bounds assume.",
    )
    gpu_memory_limit_mb: int | None = Field(
        default=None,
        ge=256,
        description="ONNX Runtime CUDA provider: cap on its memory arena per session (two "
        "loaded model versions during a promotion share the card); None: no cap.",
    )
    engine_cache_dir: Path | None = Field(
        default=None,
        description="TensorRT engines and timing caches (both TensorRT paths) and compiled "
        "OpenVINO models; default: <data_dir>/engine-cache.",
    )
    precision_guard_min_agreement: float = Field(
        default=0.999,
        gt=0.0,
        le=1.0,
        description="Reduced precision is kept only if its argmax agrees with fp32 on at "
        "least this fraction of the reference tile's voxels.",
    )
    precision_guard_max_probability_difference: float = Field(
        default=0.1,
        gt=0.0,
        le=1.0,
        description="fp16 is kept only if no probability of the reference tile differs from "
        "fp32 by more than this (fp16 overflow shows there first); for bf16 and int8 the "
        "difference is reported, not decisive: they are admitted by decisions (agreement and "
        "the held-out record).",
    )
    precision_guard_max_dice_change: float = Field(
        default=0.005,
        gt=0.0,
        le=1.0,
        description="bf16 and int8 serve only if the model folder's held-out record "
        "(precisions.json, `cerebrascan pipeline precisions`, measured on the same model.onnx) "
        "shows their labels within this 1 - Dice of fp32 in every region (WT, TC, ET) of every "
        "held-out case; a missing, stale or failed record serves fp32.",
    )

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        return check_execution_providers(value)

    @model_validator(mode="after")
    def _int8_needs_openvino(self) -> RunnerSettings:
        # int8 is an NNCF-quantised OpenVINO IR: no other engine can run it.
        if self.precision == "int8" and self.engine not in ("openvino", "auto"):
            raise ValueError(
                f"runner.precision='int8' runs only with runner.engine=openvino (the model's "
                f"NNCF-quantised model.int8.xml), got runner.engine={self.engine!r}: use engine "
                "openvino, or precision fp32 / fp16 / bf16"
            )
        return self
