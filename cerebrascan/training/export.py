"""Export a trained checkpoint to ONNX (dynamic batch axis) and check it against torch."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from cerebrascan.training.network import build_network
from cerebrascan.training.params import PipelineParams
from schemas.model_spec import ModelSpec

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-3


def export_verified_onnx(
    network: torch.nn.Module, spec: ModelSpec, in_channels: int, onnx_path: Path
) -> tuple[float, tuple[int, ...]]:
    """Export ``network`` (eval mode) with a dynamic batch axis and compare ORT with torch.

    Args:
        network: the module to export.
        spec: names of the input and output and the patch size.
        in_channels: input channels of the network.
        onnx_path: where to write the ONNX file.

    Returns:
        Max |torch - ONNX Runtime| on a fixed batch of two random tiles, and ORT's output shape.
    """
    example = torch.randn(
        2, in_channels, *spec.patch_size, generator=torch.Generator().manual_seed(0)
    )
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo but still exact for these nets.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(
            network,
            (example,),
            str(onnx_path),
            input_names=[spec.input_name],
            output_names=[spec.output_name],
            dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        reference = network(example).numpy()
    (exported,) = session.run([spec.output_name], {spec.input_name: example.numpy()})
    return float(np.max(np.abs(exported - reference))), tuple(exported.shape)


def export_onnx(params: PipelineParams, train_dir: Path, out_dir: Path) -> float:
    """Write ``model.onnx`` and ``model_spec.json`` to ``out_dir``; return max |torch - ORT|.

    Raises:
        RuntimeError: ONNX Runtime's logits differ from torch's by more than 1e-3 on a
            reference batch of two tiles.
    """
    spec = ModelSpec.model_validate_json((train_dir / "model_spec.json").read_text())
    network = build_network(len(spec.modalities), len(spec.output_labels), params.model.features)
    network.load_state_dict(torch.load(train_dir / "checkpoint.pt", weights_only=True))
    network.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    difference, _ = export_verified_onnx(network, spec, len(spec.modalities), onnx_path)
    if difference > PARITY_TOLERANCE:
        raise RuntimeError(
            f"ONNX Runtime logits differ from torch by {difference:.3g} (> {PARITY_TOLERANCE})"
        )
    (out_dir / "model_spec.json").write_text(spec.model_dump_json(indent=2))
    logger.info("exported %s (max |torch - ORT| = %.2e)", onnx_path, difference)
    return difference
