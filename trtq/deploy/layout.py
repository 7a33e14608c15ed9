"""The ONNX in DeepStream-Yolo's output layout, made by graph surgery on trtq's (ultralytics') export.

DeepStream-Yolo (github.com/marcoslucianops/DeepStream-Yolo, read at commit
2ccf52987ce1a18fc18ca5b3ba559a599259ade2) exports YOLOv8 / YOLO11 detectors with ``utils/export_yoloV8.py`` /
``utils/export_yolo11.py``:

- ``dist2bbox`` is patched to return corners ``(x1, y1, x2, y2)`` in input pixels;
- ``DeepStreamOutput`` transposes the head output to ``[B, N, 4 + nc]`` and returns
  ``cat([boxes, max(scores), argmax(scores).to(float)], -1)``: one output ``[B, N, 6]``;
- ``torch.onnx.export(..., input_names=['input'], output_names=['output'])``, opset 17, the batch axis of both
  dynamic with ``--dynamic`` (``dynamic_axes={'input': {0: 'batch'}, 'output': {0: 'batch'}}``).

Its parser ``nvdsinfer_custom_impl_Yolo/nvdsparsebbox_Yolo.cpp`` (``decodeTensorYolo``, lines 72-95) reads
``output[b * 6 + 0..5]`` for ``b < inferDims.d[0]``: the same six columns. Instead of re-tracing the PyTorch
model, the same computation is appended to the ultralytics ONNX that trtq already exports, calibrates and
quantizes, so every tensor name of the network body (and so of a calibration cache) is unchanged:

    output0 [B, 4+nc, N] -> Transpose -> [B, N, 4+nc]
      boxes  = xywh -> (x - w/2, y - h/2, x + w/2, y + h/2)      (ultralytics' xywh = centre and size, pixels)
      score  = ReduceMax(classes, -1, keepdims)                 (torch.max(..., keepdim=True) values)
      class  = Cast<float>(ArgMax(classes, -1, keepdims))       (torch.max indices, .to(boxes.dtype))
    output [B, N, 6] = Concat(boxes, score, class)

ultralytics' own head computes ``xy = anchor + (rb - lt) / 2``, ``wh = lt + rb``, so ``x - w/2 = anchor - lt``
(DeepStream-Yolo's patched ``x1y1``) up to float rounding. YOLO26's end-to-end head (ultralytics
``nms=False`` export) already outputs ``[B, 300, 6]`` in these six columns: only the names change.
The image input ``images`` is renamed ``input`` and the output ``output``.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from trtq.errors import TrtqError
from trtq.tasks import TaskLayout

INPUT_NAME = "input"
OUTPUT_NAME = "output"
PREFIX = "/deepstream"
LAYOUT_KEY = "trtq_layout"
LAYOUT_VALUE = "deepstream-yolo"


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if t == old else t for t in node.input]
        node.output[:] = [new if t == old else t for t in node.output]
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.name == old:
            vi.name = new


def _const(graph: onnx.GraphProto, name: str, values: list[int] | list[float], dtype: int) -> str:
    graph.initializer.append(helper.make_tensor(f"{PREFIX}/{name}", dtype, [len(values)], values))
    return f"{PREFIX}/{name}"


def _append_decode(graph: onnx.GraphProto, head: str, nc: int) -> str:
    """Append transpose / corners / max / argmax / concat nodes after ``head`` ([B, 4+nc, N]); return the output."""
    p = PREFIX
    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    axis = _const(graph, "axis_last", [-1], i64)
    starts = {k: _const(graph, f"start_{k}", [v], i64) for k, v in (("xy", 0), ("wh", 2), ("cls", 4))}
    ends = {k: _const(graph, f"end_{k}", [v], i64) for k, v in (("xy", 2), ("wh", 4), ("cls", 4 + nc))}
    half = _const(graph, "half", [0.5], f32)
    nodes = [
        helper.make_node("Transpose", [head], [f"{p}/transposed"], name=f"{p}/Transpose", perm=[0, 2, 1]),
        helper.make_node("Slice", [f"{p}/transposed", starts["xy"], ends["xy"], axis], [f"{p}/xy"], name=f"{p}/Slice_xy"),
        helper.make_node("Slice", [f"{p}/transposed", starts["wh"], ends["wh"], axis], [f"{p}/wh"], name=f"{p}/Slice_wh"),
        helper.make_node("Slice", [f"{p}/transposed", starts["cls"], ends["cls"], axis], [f"{p}/scores"],
                         name=f"{p}/Slice_scores"),
        helper.make_node("Mul", [f"{p}/wh", half], [f"{p}/half_wh"], name=f"{p}/Mul_half"),
        helper.make_node("Sub", [f"{p}/xy", f"{p}/half_wh"], [f"{p}/x1y1"], name=f"{p}/Sub_x1y1"),
        helper.make_node("Add", [f"{p}/xy", f"{p}/half_wh"], [f"{p}/x2y2"], name=f"{p}/Add_x2y2"),
        helper.make_node("ReduceMax", [f"{p}/scores"], [f"{p}/score"], name=f"{p}/ReduceMax", axes=[-1], keepdims=1),
        helper.make_node("ArgMax", [f"{p}/scores"], [f"{p}/class_i64"], name=f"{p}/ArgMax", axis=-1, keepdims=1),
        helper.make_node("Cast", [f"{p}/class_i64"], [f"{p}/class"], name=f"{p}/Cast", to=f32),
        helper.make_node("Concat", [f"{p}/x1y1", f"{p}/x2y2", f"{p}/score", f"{p}/class"], [OUTPUT_NAME],
                         name=f"{p}/Concat", axis=-1),
    ]
    graph.node.extend(nodes)
    return OUTPUT_NAME


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def to_deepstream_layout(model: onnx.ModelProto, layout: TaskLayout) -> onnx.ModelProto:
    """A copy of ``model`` (trtq's export of a detect model) with DeepStream-Yolo's input/output names and layout.

    ReduceMax takes ``axes`` as an attribute up to opset 17 (an input from 18): the bundle keeps the model's
    opset, which must be 13-17 like DeepStream-Yolo's default export (17).
    """
    if layout.task != "detect":
        raise TrtqError(f"deploy: only detect models have DeepStream-Yolo's output layout, got a {layout.task} model")
    opset = _opset(model)
    if not 13 <= opset <= 17:
        raise TrtqError(f"deploy needs an ONNX of opset 13-17 (DeepStream-Yolo exports 17), got opset {opset}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if len(graph.input) != 1:
        raise TrtqError(f"deploy: expected one image input, the model has {len(graph.input)}")
    head = graph.output[0].name
    _rename(graph, graph.input[0].name, INPUT_NAME)
    dims = graph.output[0].type.tensor_type.shape.dim
    batch = onnx.TypeProto.Tensor().shape.dim.add()
    batch.CopyFrom(dims[0]) if dims else None
    del graph.output[:]
    if layout.end2end:
        _rename(graph, head, OUTPUT_NAME)
        rows = 300
        for d in dims[1:2]:
            rows = d.dim_value or rows
    else:
        _append_decode(graph, head, layout.nc)
        rows = dims[2].dim_value if len(dims) == 3 and dims[2].dim_value else None
    shape: list[int | str | None] = [batch.dim_param or batch.dim_value or None, rows, 6]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, shape))
    meta = [p for p in out.metadata_props if p.key != LAYOUT_KEY]
    del out.metadata_props[:]
    out.metadata_props.extend(meta)
    out.metadata_props.append(onnx.StringStringEntryProto(key=LAYOUT_KEY, value=LAYOUT_VALUE))
    onnx.checker.check_model(out)
    return out


def appended_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes :func:`to_deepstream_layout` appended (all stay in float)."""
    return [n.name for n in model.graph.node if n.name.startswith(PREFIX + "/")]


def static_batch_input(model: onnx.ModelProto, batch: int | None) -> None:
    """Give the input (and output) a static batch ``batch``, or a dynamic ``batch`` axis only (``None``):
    DeepStream-Yolo's ``--dynamic`` makes only the batch axis dynamic; height and width stay fixed."""
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            continue
        if batch is None:
            dims[0].Clear()
            dims[0].dim_param = "batch"
        else:
            dims[0].Clear()
            dims[0].dim_value = batch
