"""Where TensorRT engines, timing caches and compiled OpenVINO models are kept, and what
invalidates them.

A TensorRT engine is only valid for the network, the precision, the optimisation profile, the
GPU model and the TensorRT build it was made with; a timing cache only for the GPU and the
TensorRT build. Both are keyed by exactly those, so a changed model or an upgraded driver stack
builds a new engine instead of loading a wrong one. A compiled OpenVINO model is keyed the same
way for the CPU: network, precision, tile shape, CPU name and instruction sets, OpenVINO
version (:func:`cpu_model_cache_key`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from runners.sliding_window import mirror_combinations
from schemas.model_spec import ModelSpec


@dataclass(frozen=True)
class TileProfile:
    """The optimisation profile: batch sizes of tiles the engine must accept."""

    input_name: str
    channels: int
    patch_size: tuple[int, int, int]
    min_batch: int
    opt_batch: int
    max_batch: int

    def shape(self, batch: int) -> tuple[int, ...]:
        """Input shape for ``batch`` tiles."""
        return (batch, self.channels, *self.patch_size)

    def ort_option(self, batch: int) -> str:
        """ONNX Runtime TensorRT EP profile string, e.g. ``image:1x4x128x128x128``."""
        return f"{self.input_name}:" + "x".join(str(d) for d in self.shape(batch))


def tile_profile(spec: ModelSpec, tile_batch_size: int) -> TileProfile:
    """The batch sizes the sliding window sends for this spec and ``tile_batch_size``.

    All mirror flips of a tile travel in one call, so with mirror TTA a call holds
    ``max(tile_batch_size // flips, 1) * flips`` tiles; the last call of a volume may hold
    fewer, down to one tile without TTA.
    """
    flips = len(mirror_combinations(spec.mirror_axes))
    largest = max(tile_batch_size, max(1, tile_batch_size // flips) * flips)
    return TileProfile(
        input_name=spec.input_name,
        channels=len(spec.modalities),
        patch_size=spec.patch_size,
        min_batch=1,
        opt_batch=largest,
        max_batch=largest,
    )


def file_digest(path: Path) -> str:
    """SHA-256 of a file (the ONNX network)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_cache_key(
    *,
    onnx_sha256: str,
    precision: str,
    profile: TileProfile,
    gpu_name: str,
    compute_capability: str,
    backend: str,
    backend_version: str,
) -> str:
    """A short stable key for one engine (see the module docstring for what it covers)."""
    material = json.dumps(
        {
            "onnx": onnx_sha256,
            "precision": precision,
            "profile": [profile.min_batch, profile.opt_batch, profile.max_batch],
            "input": [profile.input_name, profile.channels, list(profile.patch_size)],
            "gpu": gpu_name,
            "sm": compute_capability,
            "backend": backend,
            "version": backend_version,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def timing_cache_key(*, gpu_name: str, compute_capability: str, backend_version: str) -> str:
    """Key of a timing cache: shared by every network on the same GPU and TensorRT build."""
    material = f"{gpu_name}|{compute_capability}|{backend_version}"
    return hashlib.sha256(material.encode()).hexdigest()[:24]


CPU_FEATURE_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
"""The instruction sets an OpenVINO CPU kernel choice depends on (``/proc/cpuinfo`` names)."""


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """Which of :data:`CPU_FEATURE_FLAGS` this CPU has (empty where ``cpuinfo`` is unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return tuple(flag for flag in CPU_FEATURE_FLAGS if flag in flags)


def cpu_model_cache_key(
    *,
    onnx_sha256: str,
    precision: str,
    input_shape: tuple[int, ...],
    cpu_name: str,
    features: tuple[str, ...],
    backend: str,
    backend_version: str,
) -> str:
    """Key of a compiled CPU model: the network, precision, tile shape, CPU and backend build.

    The CPU counterpart of :func:`engine_cache_key`: a compiled OpenVINO blob holds kernels
    chosen for one instruction set, so a copied cache on a CPU without AMX recompiles instead
    of loading kernels it cannot run.
    """
    material = json.dumps(
        {
            "onnx": onnx_sha256,
            "precision": precision,
            "input": list(input_shape),
            "cpu": cpu_name,
            "features": list(features),
            "backend": backend,
            "version": backend_version,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:24]
