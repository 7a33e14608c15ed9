"""Test doubles for what this machine lacks: a recording fake ``tensorrt`` (``fake_tensorrt``), a fake CUDA
device (``fake_device``), and small data makers (images, a Q/DQ version of a tiny ONNX)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_images(folder: Path, n: int = 8, *, seed: int = 0, size: tuple[int, int] = (48, 64)) -> Path:
    """Write ``n`` random BGR JPEGs of ``size`` (H, W) into ``folder``; returns the folder."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        if not cv2.imwrite(str(folder / f"img{i:03d}.jpg"), img):
            raise RuntimeError("cv2 could not write a test image")
    return folder


def make_qdq_onnx(src: Path, dst: Path, *, scale: float = 0.02) -> Path:
    """A copy of ``src`` with one Q/DQ pair on the image input (enough to be an explicit-INT8 model)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    graph = model.graph
    inp = graph.input[0].name
    graph.initializer.extend([
        helper.make_tensor("qdq_scale", TensorProto.FLOAT, [], [scale]),
        helper.make_tensor("qdq_zero", TensorProto.INT8, [], [0]),
    ])
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == inp:
                node.input[i] = "images_dq"
    q = helper.make_node("QuantizeLinear", [inp, "qdq_scale", "qdq_zero"], ["images_q"], name="/quant/images_Q")
    dq = helper.make_node("DequantizeLinear", ["images_q", "qdq_scale", "qdq_zero"], ["images_dq"],
                          name="/quant/images_DQ")
    nodes = [q, dq, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst
