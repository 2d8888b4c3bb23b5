"""The preprocessing and output contract stored beside every exported segmentation network."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

NNUNET_NORMALISATIONS: tuple[str, ...] = (
    "ZScoreNormalization",
    "CTNormalization",
    "NoNormalization",
    "RescaleTo01Normalization",
)

MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
BRATS_LABELS: dict[str, int] = {"NETC": 1, "SNFH": 2, "ET": 3}
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


class ChannelNormalisation(BaseModel):
    """nnU-Net's normalisation of one input channel (``preprocessing == "nnunet"``)."""

    model_config = {"extra": "forbid"}

    scheme: Literal[
        "ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization"
    ]
    use_mask: bool = False
    """Z-score only over nnU-Net's non-zero mask (hole-filled), as ``use_mask_for_norm``."""
    intensity_properties: dict[str, float] | None = None
    """Foreground intensity statistics (``mean``, ``std``, ``percentile_00_5``,
    ``percentile_99_5``) from nnU-Net's fingerprint; required by ``CTNormalization``."""

    @model_validator(mode="after")
    def _check(self) -> ChannelNormalisation:
        if self.scheme == "CTNormalization":
            needed = {"mean", "std", "percentile_00_5", "percentile_99_5"}
            have = set(self.intensity_properties or {})
            if not needed <= have:
                raise ValueError(
                    f"CTNormalization needs intensity properties {sorted(needed - have)}"
                )
        return self


class Resampling(BaseModel):
    """nnU-Net's ``resample_data_or_seg_to_shape`` settings (skimage ``resize``, mode edge)."""

    model_config = {"extra": "forbid"}

    order: int = Field(ge=0, le=5)
    order_z: int = Field(default=0, ge=0, le=5)
    force_separate_z: bool | None = None
    separate_z_anisotropy_threshold: float = 3.0


class NnunetSource(BaseModel):
    """Where an imported nnU-Net v2 model came from."""

    model_config = {"extra": "forbid"}

    nnunetv2_version: str
    dataset_name: str
    plans_name: str
    configuration: str
    trainer: str
    folds: list[str]
    checkpoint: str
    fold_ensemble: Literal["mean_logits_in_graph"] = "mean_logits_in_graph"
    """Folds are averaged inside the one ONNX graph, on logits, as nnU-Net's predictor does."""


TORCH_IMPORTABLE_PREFIX = "torch.nn."
"""Constructor arguments named in ``requires_import`` must be classes under this package."""
WEIGHTS_FILE_PATTERN = r"^[A-Za-z0-9_\-]{1,64}\.safetensors$"


class TorchNetwork(BaseModel):
    """How to rebuild the network in PyTorch from its weights (the ``torch`` engine).

    Mirrors nnU-Net's ``architecture`` entry of plans.json: a class, its constructor keyword
    arguments, and which of those name a class to import (``conv_op``, ``norm_op``, ...).
    Weights are safetensors files (no pickle), one per fold; fold logits are averaged.
    """

    model_config = {"extra": "forbid"}

    class_path: Literal[
        "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
    ]
    kwargs: dict[str, Any]
    requires_import: list[str] = Field(default_factory=list)
    input_channels: int = Field(ge=1)
    num_outputs: int = Field(ge=1)
    weights: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> TorchNetwork:
        for key in self.requires_import:
            value = self.kwargs.get(key)
            if value is not None and (
                not isinstance(value, str) or not value.startswith(TORCH_IMPORTABLE_PREFIX)
            ):
                raise ValueError(
                    f"kwargs[{key!r}] = {value!r} must name a class under {TORCH_IMPORTABLE_PREFIX}"
                )
        bad = [w for w in self.weights if not re.match(WEIGHTS_FILE_PATTERN, w)]
        if bad:
            raise ValueError(f"weights {bad} must be plain *.safetensors file names")
        return self


class ModelSpec(BaseModel):
    """Everything a runner needs to reproduce the training-time preprocessing of a network.

    The network takes ``(batch, len(modalities), *patch_size)`` float32 input, z-scored per
    channel inside the brain, on a grid of ``target_spacing_mm`` (array axis order), and returns
    ``(batch, len(output_labels), *patch_size)`` logits; softmax over axis 1, then argmax gives
    an index into ``output_labels`` (BraTS label values).

    ``preprocessing == "nnunet"`` (format 2, imported nnU-Net v2 models) instead reproduces
    nnU-Net's predictor exactly: the (x, y, z) input array is reversed to SimpleITK's (z, y, x)
    order and permuted by ``transpose_forward``; ``target_spacing_mm``, ``patch_size`` and
    ``mirror_axes`` are in that permuted order. It is cropped to the hole-filled non-zero mask,
    each channel normalised by ``channel_normalisation`` and resampled with
    ``resampling_data``; network logits are resampled back with ``resampling_probabilities``
    before the non-linearity. ``output_kind == "sigmoid_regions"`` means one sigmoid per entry
    of ``regions`` (each a list of label values); labels are painted in ``regions_class_order``
    where the probability exceeds 0.5, as nnU-Net does.
    """

    model_config = {"extra": "forbid"}

    format_version: Literal[1, 2] = 1
    architecture: str = Field(description="Network family, e.g. PlainConvUNet.")
    modalities: list[str] = Field(default_factory=lambda: list(MODALITIES))
    target_spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    normalisation: Literal["zscore_nonzero", "per_channel"] = "zscore_nonzero"
    output_kind: Literal["softmax_labels", "sigmoid_regions"] = "softmax_labels"
    output_labels: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    input_name: str = "image"
    output_name: str = "logits"
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    # Format 2 (nnU-Net v2 import); the defaults are format 1's behaviour.
    preprocessing: Literal["cerebrascan", "nnunet"] = "cerebrascan"
    transpose_forward: tuple[int, int, int] = (0, 1, 2)
    transpose_backward: tuple[int, int, int] = (0, 1, 2)
    channel_normalisation: list[ChannelNormalisation] | None = None
    resampling_data: Resampling | None = None
    resampling_probabilities: Resampling | None = None
    regions: list[list[int]] | None = None
    regions_class_order: list[int] | None = None
    label_names: dict[str, int | list[int]] | None = None
    """Label (or region) names from nnU-Net's dataset.json, for the model card."""
    nnunet: NnunetSource | None = None
    torch_network: TorchNetwork | None = None
    """For the ``torch`` engine; models without it are served by ONNX Runtime/TensorRT only."""

    @property
    def num_outputs(self) -> int:
        """Logit channels of the network: one per region, else one per label."""
        if self.output_kind == "sigmoid_regions" and self.regions is not None:
            return len(self.regions)
        return len(self.output_labels)

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
        for perm in (self.transpose_forward, self.transpose_backward):
            if sorted(perm) != [0, 1, 2]:
                raise ValueError(f"transpose must be a permutation of (0, 1, 2), got {perm}")
        if tuple(self.transpose_forward[i] for i in self.transpose_backward) != (0, 1, 2):
            raise ValueError("transpose_backward must invert transpose_forward")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise ValueError(f"mirror_axes must be spatial axes 0-2, got {self.mirror_axes}")
        if self.output_kind == "sigmoid_regions":
            if not self.regions or not self.regions_class_order:
                raise ValueError("sigmoid_regions needs regions and regions_class_order")
            if len(self.regions) != len(self.regions_class_order):
                raise ValueError("regions and regions_class_order must have the same length")
            known = set(self.output_labels)
            if any(label not in known for region in self.regions for label in region):
                raise ValueError(f"regions {self.regions} use labels outside {self.output_labels}")
        if self.preprocessing == "nnunet":
            if self.format_version != 2:
                raise ValueError("preprocessing 'nnunet' needs format_version 2")
            if self.channel_normalisation is None or len(self.channel_normalisation) != len(
                self.modalities
            ):
                raise ValueError(
                    "nnunet preprocessing needs one channel_normalisation per modality"
                )
            if self.resampling_data is None or self.resampling_probabilities is None:
                raise ValueError("nnunet preprocessing needs resampling_data and _probabilities")
            if self.normalisation != "per_channel":
                raise ValueError("nnunet preprocessing needs normalisation 'per_channel'")
        elif self.normalisation != "zscore_nonzero" or self.transpose_forward != (0, 1, 2):
            raise ValueError("only nnunet preprocessing supports per-channel schemes and transpose")
        return self
