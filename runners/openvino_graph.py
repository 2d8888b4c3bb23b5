"""Graph rewrites applied to the OpenVINO model read from the registry's ONNX, before compiling.

OpenVINO's CPU plugin keeps activations in blocks of 16 channels (AVX-512 f32 lanes, AMX bf16
tiles). A feature map whose channel count is not a multiple of 16 (the default network's 12 and
24 features) falls onto the kernels' tail paths: on a 2-core AMX Xeon a 12-channel
convolution + instance norm (MVN) per 64³ tile took 20 + 20 ms in bf16 against 7 + 2 ms for 16
channels, i.e. the 33 % larger layer ran 3-10x faster (``benchmarks/README.md``, issue #21).

:func:`prepare_network` therefore pads such feature maps with channels that are exactly zero:
the producing convolution gets zero filters and zero bias, the per-channel affine and PReLU
constants zeros, and every consumer convolution zero weights for those inputs. A zero channel
stays zero through instance norm ((0 - 0) / sqrt(0 + eps) = 0) and leaky ReLU (a scalar add
would make it a finite constant), and its products with zero weights add exact zeros, so the
real channels compute the same sums as before: only the order of the accumulation inside the
kernels may differ (rounding). The network's input, output and weights of the real channels
are unchanged; the ONNX file in the registry is not touched, and :data:`GRAPH_REWRITE_VERSION`
enters the compiled-model cache key. The runner pads only bf16 / fp16
(:func:`channel_multiple_for`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["CHANNEL_MULTIPLE", "GRAPH_REWRITE_VERSION", "channel_multiple_for", "prepare_network"]

logger = logging.getLogger(__name__)

GRAPH_REWRITE_VERSION = "pad-channels-v1"
"""Names what :func:`prepare_network` does; part of the compiled-model cache key."""

CHANNEL_MULTIPLE = 16
"""Feature maps are padded to a multiple of this many channels (one AVX-512 f32 block)."""
NARROW_CHANNEL_MULTIPLE = 8
"""The block of CPUs without AVX-512 (AVX2 / SSE4.1 kernels block channels by 8)."""

CHANNEL_AXIS = 1
CONVOLUTIONS = ("Convolution", "ConvolutionBackpropData")
PER_CHANNEL_ELTWISE = ("Add", "Multiply")

ChannelMap = npt.NDArray[np.int64]
"""Where each original channel of a padded feature map sits; the other channels are zero."""


def channel_multiple_for(features: tuple[str, ...], precision: str) -> int:
    """The channel block to pad to on a CPU with ``features`` at ``precision`` (1: no padding).

    bf16 / fp16 are padded to the CPU plugin's channel block (16 with AVX-512, else 8). fp32 is
    not: there the padded convolutions' extra arithmetic ate the faster instance norm (per tile
    0.9-1.1x of the unpadded network, within the shared machine's noise; benchmarks/README.md).

    Args:
        features: the CPU's instruction-set flags (:func:`runners.engine_cache.cpu_features`).
        precision: ``runner.precision`` being compiled.
    """
    if precision not in ("bf16", "fp16"):
        return 1
    return CHANNEL_MULTIPLE if "avx512f" in features else NARROW_CHANNEL_MULTIPLE


def prepare_network(model: Any, channel_multiple: int = CHANNEL_MULTIPLE) -> Any:
    """Pad the network's feature maps to ``channel_multiple`` channels with zero channels.

    Pads the output of each convolution (or transposed convolution) with constant weights whose
    channel count is not a multiple of ``channel_multiple`` and whose output, through per-channel
    ``Add`` / ``Multiply`` constants, MVN over the spatial axes, ``PRelu`` and channel
    ``Concat``, reaches only other convolutions; the consumers' weights get zero rows for the
    padded channels. Any other consumer of a padded map (none in a plain U-Net) gets the original
    channels back through a ``Gather``, so the rewrite is exact for any graph.

    Args:
        model: an ``openvino.Model`` (as read from ONNX); modified in place. Constant
            sub-graphs are folded first.
        channel_multiple: channel block to pad to; 1 leaves the model as it is.

    Returns:
        The same model, rewritten.

    Raises:
        ValueError: ``channel_multiple`` is smaller than 1.
    """
    if channel_multiple < 1:
        raise ValueError(f"channel_multiple must be at least 1, got {channel_multiple}")
    if channel_multiple == 1:
        return model
    from openvino.passes import ConstantFolding, Manager

    manager = Manager()
    manager.register_pass(ConstantFolding())
    manager.run_passes(model)

    maps: dict[tuple[str, int], ChannelMap] = {}
    padded_layers = 0
    for node in model.get_ordered_ops():
        kind = node.get_type_name()
        mapped = [_map_of(maps, node.input_value(i)) for i in range(node.get_input_size())]
        if kind in CONVOLUTIONS and _constant(node.input_value(1)) is not None:
            out_map = _rewrite_convolution(node, mapped[0], channel_multiple)
            if out_map is not None:
                maps[_key(node.output(0))] = out_map
                padded_layers += 1
        elif all(m is None for m in mapped):
            continue
        elif kind in PER_CHANNEL_ELTWISE and _pad_per_channel_constant(node, mapped):
            maps[_key(node.output(0))] = next(m for m in mapped if m is not None)
        elif kind == "MVN" and _mvn_is_per_channel(node) and mapped[0] is not None:
            node.validate_and_infer_types()
            maps[_key(node.output(0))] = mapped[0]
        elif kind == "PRelu" and mapped[1] is None and _pad_slope(node, mapped[0]):
            maps[_key(node.output(0))] = mapped[0]  # type: ignore[assignment]
        elif kind == "Concat" and _concat_axis(node) == CHANNEL_AXIS:
            maps[_key(node.output(0))] = _concat_map(node, mapped)
        else:
            _restore_channels(node, mapped)
    model.validate_nodes_and_infer_types()
    logger.info(
        "OpenVINO graph rewrite %s: %d layer output(s) padded to multiples of %d channels",
        GRAPH_REWRITE_VERSION,
        padded_layers,
        channel_multiple,
    )
    return model


def _key(output: Any) -> tuple[str, int]:
    return (output.get_node().get_name(), output.get_index())


def _map_of(maps: dict[tuple[str, int], ChannelMap], output: Any) -> ChannelMap | None:
    return maps.get(_key(output))


def _constant(output: Any) -> npt.NDArray[Any] | None:
    node = output.get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def _new_constant(values: npt.NDArray[Any]) -> Any:
    import openvino.opset13 as ops

    return ops.constant(np.ascontiguousarray(values)).output(0)


def _padded_size(channels: int, multiple: int) -> int:
    return -(-channels // multiple) * multiple


def _scatter(values: npt.NDArray[Any], axis: int, channel_map: ChannelMap, size: int) -> Any:
    """``values`` with its ``axis`` spread over ``size`` entries at ``channel_map``, zeros
    elsewhere."""
    shape = list(values.shape)
    shape[axis] = size
    padded = np.zeros(shape, dtype=values.dtype)
    index: list[Any] = [slice(None)] * values.ndim
    index[axis] = channel_map
    padded[tuple(index)] = values
    return padded


def _rewrite_convolution(node: Any, in_map: ChannelMap | None, multiple: int) -> ChannelMap | None:
    """Zero weights for padded inputs; pad the outputs when only convolutions consume them.

    Returns:
        The output's channel map, or ``None`` when the output keeps its channels.
    """
    weights = _constant(node.input_value(1))
    assert weights is not None
    # Convolution weights are (out, in, *k); ConvolutionBackpropData's (in, out, *k).
    in_axis, out_axis = (1, 0) if node.get_type_name() == "Convolution" else (0, 1)
    if in_map is not None:
        in_size = int(node.input_value(0).get_partial_shape()[CHANNEL_AXIS].get_length())
        weights = _scatter(weights, in_axis, in_map, in_size)
    out_channels = weights.shape[out_axis]
    out_map: ChannelMap | None = None
    if out_channels % multiple and _only_convolutions_consume(node.output(0)):
        out_map = np.arange(out_channels, dtype=np.int64)
        weights = _scatter(weights, out_axis, out_map, _padded_size(out_channels, multiple))
    if in_map is not None or out_map is not None:
        node.input(1).replace_source_output(_new_constant(weights))
        node.validate_and_infer_types()
    return out_map


def _only_convolutions_consume(output: Any) -> bool:
    """Whether every path from ``output`` through channel-wise ops ends in a convolution."""
    for target in output.get_target_inputs():
        node = target.get_node()
        kind = node.get_type_name()
        if kind in CONVOLUTIONS and target.get_index() == 0:
            continue
        passes = (
            (kind in PER_CHANNEL_ELTWISE and _per_channel_constant_of(node) is not None)
            or (kind == "MVN" and _mvn_is_per_channel(node))
            or (kind == "PRelu" and target.get_index() == 0)
            or (kind == "Concat" and _concat_axis(node) == CHANNEL_AXIS)
        )
        if not passes or not _only_convolutions_consume(node.output(0)):
            return False
    return True


def _per_channel_constant_of(node: Any) -> int | None:
    """Index of the input that is a constant of shape ``(1, C, 1, ...)`` or a single value."""
    for index in range(node.get_input_size()):
        values = _constant(node.input_value(index))
        if values is None:
            continue
        if values.size == 1 or (
            values.ndim >= 2 and values.shape[0] == 1 and values.size == values.shape[CHANNEL_AXIS]
        ):
            return index
    return None


def _pad_per_channel_constant(node: Any, mapped: list[ChannelMap | None]) -> bool:
    """Give an ``Add`` / ``Multiply`` by a per-channel constant zeros for padded channels."""
    index = _per_channel_constant_of(node)
    data_index = 1 - index if index is not None else None
    if index is None or data_index is None or mapped[data_index] is None:
        return False
    values = _constant(node.input_value(index))
    assert values is not None
    if values.size > 1:
        size = int(node.input_value(data_index).get_partial_shape()[CHANNEL_AXIS].get_length())
        padded = _scatter(values, CHANNEL_AXIS, mapped[data_index], size)  # type: ignore[arg-type]
        node.input(index).replace_source_output(_new_constant(padded))
    node.validate_and_infer_types()
    return True


def _mvn_is_per_channel(node: Any) -> bool:
    """An MVN that normalises each channel on its own (spatial axes only, like instance norm),
    with ``eps > 0``: a constant padded channel then becomes 0, not 0 / 0."""
    axes = _constant(node.input_value(1)) if node.get_input_size() > 1 else None
    if axes is None or not float(node.get_attributes().get("eps", 0.0)) > 0.0:
        return False
    rank = node.input_value(0).get_partial_shape().rank.get_length()
    return all(int(a) % rank not in (0, CHANNEL_AXIS) for a in np.ravel(axes))


def _pad_slope(node: Any, in_map: ChannelMap | None) -> bool:
    """A PReLU slope per channel gets zeros for padded channels; a single slope stays."""
    slope = _constant(node.input_value(1))
    if slope is None or in_map is None:
        return False
    if slope.size > 1:
        size = int(node.input_value(0).get_partial_shape()[CHANNEL_AXIS].get_length())
        axis = slope.ndim - 1 if slope.ndim == 1 else CHANNEL_AXIS
        node.input(1).replace_source_output(_new_constant(_scatter(slope, axis, in_map, size)))
    node.validate_and_infer_types()
    return True


def _concat_axis(node: Any) -> int:
    rank = int(node.get_output_partial_shape(0).rank.get_length())
    return int(node.get_attributes()["axis"]) % rank


def _concat_map(node: Any, mapped: list[ChannelMap | None]) -> ChannelMap:
    """The channel map of a channel concat of (partly) padded inputs."""
    node.validate_and_infer_types()
    parts, offset = [], 0
    for index, channel_map in enumerate(mapped):
        size = int(node.input_value(index).get_partial_shape()[CHANNEL_AXIS].get_length())
        parts.append(offset + (channel_map if channel_map is not None else np.arange(size)))
        offset += size
    return np.concatenate(parts).astype(np.int64)


def _restore_channels(node: Any, mapped: list[ChannelMap | None]) -> None:
    """Feed ``node`` the original channels of each padded input (a Gather on the channel axis)."""
    import openvino.opset13 as ops

    for index, channel_map in enumerate(mapped):
        if channel_map is None:
            continue
        source = node.input_value(index)
        original = ops.gather(
            source,
            _new_constant(channel_map),
            _new_constant(np.array(CHANNEL_AXIS, dtype=np.int64)),
        )
        node.input(index).replace_source_output(original.output(0))
    node.validate_and_infer_types()
