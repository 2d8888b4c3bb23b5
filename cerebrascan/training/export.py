"""Export a trained checkpoint to ONNX (dynamic batch axis) and check it against torch."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import save_model

from cerebrascan.training.network import build_network
from cerebrascan.training.params import PipelineParams
from schemas.model_spec import ModelSpec, TorchNetwork

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


def default_network_description(
    in_channels: int, num_classes: int, features: list[int], conv_per_stage: int = 2
) -> TorchNetwork:
    """The default network (:func:`build_network`) as a torch-engine description.

    Weights are named ``network.safetensors``; the export checks that the network rebuilt from
    this description gives the same logits as the trained one.
    """
    n_stages = len(features)
    return TorchNetwork(
        class_path="dynamic_network_architectures.architectures.unet.PlainConvUNet",
        kwargs={
            "n_stages": n_stages,
            "features_per_stage": list(features),
            "conv_op": "torch.nn.Conv3d",
            "kernel_sizes": 3,
            "strides": [1] + [2] * (n_stages - 1),
            "n_conv_per_stage": conv_per_stage,
            "n_conv_per_stage_decoder": conv_per_stage,
            "conv_bias": True,
            "norm_op": "torch.nn.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        requires_import=["conv_op", "norm_op", "nonlin"],
        input_channels=in_channels,
        num_outputs=num_classes,
        weights=["network.safetensors"],
    )


def save_torch_weights(
    members: list[torch.nn.Module],
    description: TorchNetwork,
    out_dir: Path,
    example: torch.Tensor,
) -> float:
    """Write each member's weights as safetensors and check the rebuilt network.

    Args:
        members: one trained network per entry of ``description.weights``.
        description: how the torch engine rebuilds them.
        out_dir: the model folder.
        example: an input batch for the check.

    Returns:
        Max |logits of the rebuilt fold mean - logits of the trained networks' mean|.

    Raises:
        RuntimeError: the rebuilt network differs (the description does not match the network).
    """
    from runners.torch_network import FoldMean, load_torch_network

    if len(members) != len(description.weights):
        raise ValueError(f"{len(members)} networks for weights {description.weights}")
    for member, name in zip(members, description.weights):
        # save_model drops the aliases (PlainConvUNet's decoder holds the encoder again).
        save_model(member, str(out_dir / name))
    rebuilt = load_torch_network(description, out_dir)
    with torch.no_grad():
        difference = float((rebuilt(example) - FoldMean(members).eval()(example)).abs().max())
    if difference > 1e-5:
        raise RuntimeError(f"torch network rebuilt from its description differs by {difference}")
    return difference


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
    description = default_network_description(
        len(spec.modalities), len(spec.output_labels), params.model.features
    )
    example = torch.randn(1, len(spec.modalities), *spec.patch_size)
    save_torch_weights([network], description, out_dir, example)
    spec = spec.model_copy(update={"torch_network": description})
    (out_dir / "model_spec.json").write_text(spec.model_dump_json(indent=2))
    logger.info("exported %s (max |torch - ORT| = %.2e)", onnx_path, difference)
    return difference
