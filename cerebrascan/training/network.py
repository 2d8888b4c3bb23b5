"""The default segmentation network: nnU-Net's PlainConvUNet (dynamic_network_architectures)."""

from __future__ import annotations

from typing import Any

from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn


def build_network(
    in_channels: int, num_classes: int, features: list[int], conv_per_stage: int = 2
) -> PlainConvUNet:
    """A 3D PlainConvUNet with instance norm and leaky ReLU, nnU-Net's defaults.

    Args:
        in_channels: input modalities.
        num_classes: output logit channels (background included).
        features: channels per stage; the first stage keeps full resolution, each next one
            halves it.
        conv_per_stage: convolutions per encoder and decoder stage.
    """
    if len(features) < 2:
        raise ValueError(f"features needs at least two stages, got {features}")
    n_stages = len(features)
    norm_kwargs: dict[str, Any] = {"eps": 1e-5, "affine": True}
    return PlainConvUNet(
        input_channels=in_channels,
        n_stages=n_stages,
        features_per_stage=features,
        conv_op=nn.Conv3d,
        kernel_sizes=3,
        strides=[1] + [2] * (n_stages - 1),
        n_conv_per_stage=conv_per_stage,
        num_classes=num_classes,
        n_conv_per_stage_decoder=conv_per_stage,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs=norm_kwargs,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )
