"""Offline: deepbet's published TorchScript weights -> the two ONNX files serving runs (torch).

deepbet 1.0.2 (MIT) ships ``data/models/bbox_model.pt`` and ``data/models/model.pt`` in its
wheel. The wheel is downloaded (``requirements/brain_extraction.txt``, hash-pinned) and never
installed: this module reads the two files from the zip, checks the wheel's SHA-256, exports
each network with spatial axes dynamic and strips the final softmax, so the graphs output the
two-class logits (:mod:`cerebrascan.brain_extraction.deepbet_maths` thresholds their
difference). Serving never imports this module.

Usage::

    python -m cerebrascan.brain_extraction.export --wheel deepbet-1.0.2-py3-none-any.whl \
        --out models/brain_extraction
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import zipfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEEPBET_WHEEL = "deepbet-1.0.2-py3-none-any.whl"
DEEPBET_WHEEL_SHA256 = "1999e2ea00ec48f6233b95b96f3901a962d3f70431c63aeb985e8a49a198473c"
#: wheel member -> (ONNX file name, edge of the cube used to trace it)
NETWORKS: dict[str, tuple[str, int]] = {
    "data/models/bbox_model.pt": ("deepbet_bbox.onnx", 128),
    "data/models/model.pt": ("deepbet_brain.onnx", 256),
}
OPSET = 17


def check_wheel(wheel: Path) -> None:
    """Refuse a wheel whose SHA-256 is not deepbet 1.0.2's.

    Raises:
        FileNotFoundError: ``wheel`` does not exist.
        ValueError: its digest differs (the message gives both).
    """
    if not wheel.is_file():
        raise FileNotFoundError(
            f"{wheel} not found; download it with `pip download --no-deps --require-hashes "
            "-r requirements/brain_extraction.txt -d <folder>`"
        )
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != DEEPBET_WHEEL_SHA256:
        raise ValueError(f"{wheel} has SHA-256 {digest}, expected {DEEPBET_WHEEL_SHA256}")


def load_torchscript(wheel: Path, member: str) -> Any:
    """The TorchScript network ``member`` of the deepbet wheel, in eval mode on the CPU.

    TorchScript archives hold code and tensors, not pickled Python objects of ours; the wheel's
    digest is checked first (:func:`check_wheel`).
    """
    import torch

    check_wheel(wheel)
    with zipfile.ZipFile(wheel) as archive:
        payload = archive.read(member)
    network = torch.jit.load(io.BytesIO(payload), map_location="cpu")  # type: ignore[no-untyped-call]
    network.eval()
    return network


def strip_softmax(model: Any) -> Any:
    """The ONNX model with its final Softmax removed: the graph outputs logits.

    Raises:
        ValueError: the graph does not end in a Softmax over the channel axis.
    """
    import onnx

    graph = model.graph
    last = graph.node[-1]
    axis = next((a.i for a in last.attribute if a.name == "axis"), None)
    if last.op_type != "Softmax" or axis != 1 or last.output[0] != graph.output[0].name:
        raise ValueError(
            f"expected the graph to end in Softmax(axis=1), found {last.op_type} (axis {axis})"
        )
    logits = last.input[0]
    graph.node.remove(last)
    output = graph.output[0]
    output.name = logits
    stripped: Any = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(stripped)
    return stripped


def export_network(network: Any, edge: int, destination: Path) -> Path:
    """Export one deepbet network to ONNX: input ``image``, output the logits, spatial axes dynamic.

    Args:
        network: the TorchScript module.
        edge: cube edge of the tracing input (the size deepbet runs it at).
        destination: the ``.onnx`` file written.
    """
    import onnx
    import torch

    example = torch.zeros((1, 1, edge, edge, edge), dtype=torch.float32)
    spatial = {2: "x", 3: "y", 4: "z"}
    buffer = io.BytesIO()
    torch.onnx.export(
        network,
        (example,),
        buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
        dynamo=False,
        opset_version=OPSET,
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": spatial, "probabilities": spatial},
    )
    model = strip_softmax(onnx.load_from_string(buffer.getvalue()))
    destination.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(destination))
    logger.info("wrote %s (%.1f MB)", destination, destination.stat().st_size / 1e6)
    return destination


def export_deepbet(wheel: Path, out_dir: Path) -> list[Path]:
    """Write ``deepbet_bbox.onnx`` and ``deepbet_brain.onnx`` from the wheel to ``out_dir``."""
    written = []
    for member, (name, edge) in NETWORKS.items():
        written.append(export_network(load_torchscript(wheel, member), edge, out_dir / name))
    return written


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--wheel`` (the deepbet wheel) and ``--out`` (folder of the ONNX files)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheel", type=Path, required=True, help=f"path of {DEEPBET_WHEEL}")
    parser.add_argument("--out", type=Path, required=True, help="folder of the ONNX files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    export_deepbet(args.wheel, args.out)


if __name__ == "__main__":
    main()
