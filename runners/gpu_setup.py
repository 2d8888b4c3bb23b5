"""What a GPU engine needs from the machine before it starts: shared libraries and the GPU's name.

I/O only (shared libraries, ``nvidia-smi``); no maths. Written from the CUDA/TensorRT packaging as
documented, and checked on a machine without a GPU only as far as one allows (docs/engines.md,
"Checked without a GPU").

- ONNX Runtime's CUDA and TensorRT execution providers ``dlopen`` CUDA, cuDNN and ``libnvinfer``
  by soname. The pip wheels (``nvidia-*-cu12``, ``tensorrt-cu12``) put them under
  ``site-packages``, where the dynamic loader does not look; without a preload the provider fails
  to initialise and ONNX Runtime silently runs on the CPU.
- Engine caches must be keyed by the GPU model; without torch the name comes from ``nvidia-smi``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import shutil
import subprocess
from pathlib import Path

from runners.errors import RunnerConfigError

logger = logging.getLogger(__name__)

UNKNOWN_GPU = ("unknown", "unknown")

# Load order matters: the plugin and the ONNX parser link against libnvinfer.
_TENSORRT_LIBRARY_ORDER = ("libnvinfer.so", "libnvinfer_plugin.so", "libnvonnxparser.so")


def tensorrt_library_files(folder: Path) -> list[Path]:
    """The TensorRT shared libraries in ``folder``, in the order they must be loaded.

    Only the three libraries the TensorRT execution provider and the native engine need
    (versioned sonames such as ``libnvinfer.so.10``); builder resources and lean runtimes are
    loaded by ``libnvinfer`` itself.
    """
    found: list[Path] = []
    for stem in _TENSORRT_LIBRARY_ORDER:
        candidates = sorted(p for p in folder.glob(f"{stem}.*") if p.is_file())
        if candidates:
            # The shortest name is the soname (libnvinfer.so.10), not libnvinfer.so.10.3.0.
            found.append(min(candidates, key=lambda p: len(p.name)))
    return found


def preload_tensorrt_libraries() -> list[str]:
    """Load TensorRT's libraries from the ``tensorrt-cu12`` wheels so ONNX Runtime finds them.

    ``import tensorrt`` does this for the native engine; the TensorRT *execution provider* of
    ONNX Runtime never imports it, so the libraries are loaded here with ``RTLD_GLOBAL`` (the
    provider's ``dlopen("libnvinfer.so.N")`` then finds the loaded copy).

    Returns:
        The names of the libraries loaded (empty when no ``tensorrt_libs`` package is installed:
        then the system's library path must provide them).

    Raises:
        RunnerConfigError: a library exists but does not load (wrong CUDA major, missing
            dependency), named with the loader's message.
    """
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is None or not spec.submodule_search_locations:
        return []
    loaded: list[str] = []
    for folder in spec.submodule_search_locations:
        for library in tensorrt_library_files(Path(folder)):
            try:
                ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                raise RunnerConfigError(f"TensorRT library {library} does not load: {exc}") from exc
            loaded.append(library.name)
    logger.info("preloaded TensorRT libraries %s", loaded)
    return loaded


def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the ``nvidia-*`` wheels for ONNX Runtime's GPU providers.

    ``onnxruntime.preload_dlls`` (ORT >= 1.21) searches the nvidia site packages; a no-op
    where ORT is older (then torch's import or the system path must provide them).
    """
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload(cuda=True, cudnn=True, msvc=False)


def parse_nvidia_smi_identity(output: str) -> tuple[str, str]:
    """``(name, compute capability)`` from ``nvidia-smi --query-gpu=name,compute_cap`` CSV.

    Returns:
        :data:`UNKNOWN_GPU` when the line is not two fields (an old driver without
        ``compute_cap`` prints an error instead).
    """
    line = output.strip().splitlines()[0] if output.strip() else ""
    fields = [field.strip() for field in line.split(",")]
    if len(fields) != 2 or not all(fields) or not fields[1].replace(".", "").isdigit():
        return UNKNOWN_GPU
    return fields[0], fields[1]


def gpu_identity(device_id: int) -> tuple[str, str]:
    """Name and compute capability of CUDA device ``device_id``, for engine cache keys.

    From torch when it is installed and sees CUDA, else from ``nvidia-smi``; :data:`UNKNOWN_GPU`
    when neither can tell (callers then must not share engine caches across machines).
    """
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device_id)
        return torch.cuda.get_device_name(device_id), f"{major}.{minor}"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return UNKNOWN_GPU
    try:
        completed = subprocess.run(
            [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", str(device_id)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN_GPU
    if completed.returncode != 0:
        return UNKNOWN_GPU
    return parse_nvidia_smi_identity(completed.stdout)
