"""FP16 ONNX models: calibrated in float32, quantized with scales in the model's own float type.

TensorRT builds explicit-quantization (Q/DQ) models as strongly typed networks (required from TensorRT
11): every layer runs in the type the ONNX gives it. An FP32 Q/DQ model therefore runs its float layers
(the head, attention) in FP32, an FP16 one in FP16, which is what a deployment wants. So trtq accepts FP16
ONNX models: statistics are collected on a float32 copy (same tensor names, so the ranges and the
calibration cache apply to the FP16 model as they are), and the Q/DQ nodes written into the FP16 model
carry FP16 scales (QuantizeLinear / DequantizeLinear on float16 need opset 19).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: QuantizeLinear / DequantizeLinear accept float16 from this opset on
FP16_QDQ_OPSET = 19


def is_float16(model: Any) -> bool:
    """True when the model's weights or image input are FP16."""
    from onnx import TensorProto

    return any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer) or any(
        i.type.tensor_type.elem_type == TensorProto.FLOAT16 for i in model.graph.input
    )


def as_float32(model: Any) -> Any:
    """A float32 copy of an FP16 model (the model itself when it has nothing in FP16).

    FP16 initializers and Constant values become float32, Casts to float16 cast to float32 instead, and
    the declared types of inputs, outputs and intermediate tensors follow. Tensor and node names are kept.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    if not is_float16(model) and not any(_casts_to_fp16(n) for n in model.graph.node):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for i, init in enumerate(g.initializer):
        if init.data_type == TensorProto.FLOAT16:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    for node in g.node:
        for attr in node.attribute:
            if attr.name == "to" and node.op_type == "Cast" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    return m


def _casts_to_fp16(node: Any) -> bool:
    from onnx import TensorProto

    return node.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in node.attribute)


def tensor_types(model: Any) -> dict[str, int]:
    """ONNX element type of every tensor shape inference can tell (initializers included)."""
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is best effort
        inferred = model
    types = {i.name: i.data_type for i in model.graph.initializer}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        types[vi.name] = vi.type.tensor_type.elem_type
    return types
