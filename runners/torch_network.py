"""Rebuild a segmentation network in PyTorch from its model-spec description and weights.

The description (:class:`schemas.model_spec.TorchNetwork`) follows nnU-Net's plans.json
``architecture`` entry; only nnU-Net's own architecture classes and ``torch.nn`` layer classes
can be named, and weights are read from safetensors files (no pickle is ever loaded).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model

from schemas.model_spec import TORCH_IMPORTABLE_PREFIX, TorchNetwork


def _import_class(dotted: str) -> Any:
    module_name, _, attribute = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def build_torch_network(description: TorchNetwork) -> torch.nn.Module:
    """The network described, with fresh weights (deep supervision off).

    Raises:
        ValueError: a class named in ``requires_import`` is not a ``torch.nn`` class (the schema
            checks this too; repeated here because it guards an import).
    """
    kwargs = dict(description.kwargs)
    for key in description.requires_import:
        value = kwargs.get(key)
        if value is None:
            continue
        if not str(value).startswith(TORCH_IMPORTABLE_PREFIX):
            raise ValueError(f"refusing to import {value!r} for {key!r}")
        kwargs[key] = _import_class(str(value))
    network_class = _import_class(description.class_path)
    network: torch.nn.Module = network_class(
        input_channels=description.input_channels,
        num_classes=description.num_outputs,
        deep_supervision=False,
        **kwargs,
    )
    return network


class FoldMean(torch.nn.Module):
    """Mean of the members' logits, as nnU-Net's predictor averages folds."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor = self.members[0](x)
        for member in self.members[1:]:
            total = total + member(x)
        return total / len(self.members) if len(self.members) > 1 else total


def load_torch_network(description: TorchNetwork, folder: Path) -> torch.nn.Module:
    """Build every fold's network, load its safetensors weights and return their mean.

    Raises:
        FileNotFoundError: a weights file named in the description is missing.
        RuntimeError: the weights do not fit the described network.
    """
    members = []
    for name in description.weights:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"torch weights {path} named in model_spec.json are missing")
        network = build_torch_network(description)
        load_model(network, str(path), strict=True)
        members.append(network.eval())
    return FoldMean(members).eval()
