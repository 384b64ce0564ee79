"""The int8 head of an exported model, built from the activation ranges in ``<task>_model.int8.json``.

The head's convolutions get int8 weights (per output channel, symmetric) and ``FakeQuantize`` activation
quantizers over ``[0, max]`` at :data:`SITE_LAYERS`; the trunk, the dense outputs and the age curve stay
float32 (the scheme and its measurements: :mod:`train.quantize`). :func:`build_int8` runs on every export
(``python -m train.export``), from the committed ranges file, without the data; ``python -m train.quantize``
measures the ranges.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core.modelfiles import file_sha256, int8_ranges_path, part_path
from core.runtime import INT8_PARTS, import_openvino

#: The layers whose outputs the activation quantizers follow, in order (the head's input: pool2).
SITE_LAYERS = ("pool2", *(f"relu{block}_{i}" for block in (3, 4, 5) for i in (1, 2, 3)))
#: Activation quantizers' levels (uint8 over [0, max]) and weight levels (int8, symmetric, narrow range).
ACTIVATION_LEVELS = 256
WEIGHT_LEVELS = 255
#: Consumers after which a ReLU's output is quantized: the head's feature maps, not the age curve's ReLU.
QUANTIZED_CONSUMERS = ("Convolution", "MaxPool")


def activation_sites(model) -> list:
    """The outputs of an exported head (``openvino.Model``) that get an activation quantizer, in graph order:
    its input and each ReLU whose output feeds a convolution or a max pool (:data:`SITE_LAYERS`)."""
    sites = [model.get_parameters()[0].output(0)]
    for op in model.get_ordered_ops():
        consumers = {target.get_node().get_type_name() for target in op.output(0).get_target_inputs()}
        if op.get_type_name() == "Relu" and consumers & set(QUANTIZED_CONSUMERS):
            sites.append(op.output(0))
    convolutions = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    if len(sites) != len(SITE_LAYERS) or len(convolutions) != len(SITE_LAYERS) - 1:
        raise ValueError(f"expected a VGG head with {len(SITE_LAYERS) - 1} convolutions and as many ReLUs, found "
                         f"{len(convolutions)} convolutions and {len(sites) - 1} quantizable ReLUs")
    return sites


def quantized_weights(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 (``weights``: (out, ...) float32) -> (int8 values, float32 scales
    shaped to broadcast); ``values * scales`` is within half a step of ``weights``. A channel of zeros (or of
    subnormal numbers) keeps scale 1."""
    w = np.asarray(weights, np.float32)
    half = (WEIGHT_LEVELS - 1) // 2
    scale = (np.abs(w).reshape(len(w), -1).max(axis=1) / half).astype(np.float32)
    scale = np.where(scale > np.finfo(np.float32).tiny, scale, 1.0).astype(np.float32)  # zeros (or subnormals)
    scale = scale.reshape(-1, *([1] * (w.ndim - 1)))
    return np.clip(np.rint(w / scale), -half, half).astype(np.int8), scale


def quantize_head(head_xml: Path, maxima: list[float], out_xml: Path) -> None:
    """Write the int8 head (see the module docstring) of the float32 head ``head_xml`` to ``out_xml``
    (.xml + .bin), activation quantizers over ``[0, maxima[i]]``."""
    import openvino.opset13 as ops

    ov = import_openvino()
    model = ov.Core().read_model(str(head_xml))
    sites = activation_sites(model)
    if len(maxima) != len(sites):
        raise ValueError(f"{len(maxima)} activation ranges for {len(sites)} sites")
    for site, high in zip(sites, maxima):
        targets = list(site.get_target_inputs())
        low_c, high_c = ops.constant(np.float32(0.0)), ops.constant(np.float32(max(high, 1e-6)))
        quantizer = ops.fake_quantize(site, low_c, high_c, low_c, high_c, ACTIVATION_LEVELS)
        for target in targets:
            target.replace_source_output(quantizer.output(0))
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Convolution":
            continue
        source = op.input(1).get_source_output().get_node()
        if source.get_type_name() != "Constant":
            raise ValueError(f"{op.get_friendly_name()}: weights are a {source.get_type_name()}, not a constant")
        values, scale = quantized_weights(source.get_data())
        weights = ops.multiply(ops.convert(ops.constant(values), "f32"), ops.constant(scale))
        op.input(1).replace_source_output(weights.output(0))
    model.validate_nodes_and_infer_types()
    ov.save_model(model, str(out_xml), compress_to_fp16=False)


def build_int8(model_path: Path, log=print) -> dict[str, Any] | None:
    """The int8 head of ``model_path`` from its ranges file, where that file is there and was measured on
    this ``.h5``: written next to the float32 head, and its entry for the export sidecar returned. None (and
    any older int8 head removed) otherwise."""
    ranges_file = int8_ranges_path(model_path)
    out = part_path(model_path, INT8_PARTS["head"])
    try:
        record = json.loads(ranges_file.read_text()) if ranges_file.is_file() else None
    except (OSError, ValueError) as exc:
        log(f"warning: {ranges_file.name} is unreadable ({exc}); no int8 head")
        record = None
    if record is not None and record.get("source_sha256") != file_sha256(model_path):
        log(f"warning: {ranges_file.name} was measured on another {model_path.name}; no int8 head until "
            "`python -m train.quantize --data-dir ...` measures it again")
        record = None
    if record is None:
        out.unlink(missing_ok=True)
        out.with_suffix(".bin").unlink(missing_ok=True)
        return None
    quantize_head(part_path(model_path, "head"), [site["max"] for site in record["sites"]], out)
    return {"head": out.name, "ranges": ranges_file.name, "ranges_sha256": file_sha256(ranges_file),
            "parity": record.get("parity", {})}
