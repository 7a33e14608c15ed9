"""Quantization-aware fine-tuning on the shared YOLOv8n: short runs (a few iterations at 320 px)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from trtq.cli import main
from trtq.quantize_options import QuantizeOptions

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

IMGSZ = 320


def _quantized_tensors(path: Path) -> set[str]:
    """Every tensor a QuantizeLinear reads: activations and weights."""
    return {n.input[0] for n in onnx.load(str(path)).graph.node if n.op_type == "QuantizeLinear"}


@pytest.fixture(scope="module")
def base_onnx(tmp_path_factory: pytest.TempPathFactory, yolo_pt: Path) -> Path:
    from trtq.export import export_onnx

    return export_onnx(yolo_pt, imgsz=IMGSZ, output=tmp_path_factory.mktemp("base") / "yolov8n.onnx")


@pytest.fixture(scope="module")
def qat_labels(tmp_path_factory: pytest.TempPathFactory, yolo_pt: Path, val_yaml: Path) -> Path:
    """The short QAT run: label loss, head quantized, 2 iterations."""
    from trtq.qat import qat

    out = tmp_path_factory.mktemp("qat") / "labels.onnx"
    res = qat(yolo_pt, data=val_yaml, epochs=1, batch=2, imgsz=IMGSZ, quantize_head=True, output=out,
              num_images=4, calib_images=4, progress=False)
    assert res.path == out
    return out


@pytest.fixture(scope="module")
def qat_distill(tmp_path_factory: pytest.TempPathFactory, yolo_pt: Path, calib_dir: Path) -> Path:
    """Distillation on unlabelled images, default head policy."""
    from trtq.qat import qat

    out = tmp_path_factory.mktemp("qat") / "distill.onnx"
    qat(yolo_pt, calib=calib_dir, distill=True, epochs=1, batch=2, imgsz=IMGSZ, output=out,
        num_images=4, calib_images=4, progress=False)
    return out


@pytest.mark.parametrize("quantize_head", [True, False])
def test_placement_parity_with_trtq_quantize(
    quantize_head: bool, qat_labels: Path, qat_distill: Path, base_onnx: Path, calib_dir: Path, tmp_path: Path
) -> None:
    from trtq.quantize import quantize

    qat_out = qat_labels if quantize_head else qat_distill
    ptq = quantize(base_onnx, calib_dir, QuantizeOptions(num_images=4, quantize_head=quantize_head, progress=False),
                   output=tmp_path / "ptq.onnx")
    expected = _quantized_tensors(ptq.path)
    assert _quantized_tensors(qat_out) == expected
    head_convs = {f"model.22.cv{b}.{i}.2.weight" for b in (2, 3) for i in range(3)}
    assert head_convs <= expected if quantize_head else not (head_convs & expected)
    assert "model.22.dfl.conv.weight" not in expected  # the DFL stays float either way


def test_outputs_are_complete_and_accepted_by_the_other_commands(qat_labels: Path, val_yaml: Path) -> None:
    from calibrators.table import CalibrationTable
    from trtq.fidelity import compare
    from trtq.fileio import sha256_file

    stem = qat_labels.with_suffix("")
    report = json.loads(stem.with_suffix(".report.json").read_text())
    q = report["qat"]
    assert q["mode"] == "labels" and q["quantize_head"] and q["iterations"] == 2
    assert report["counts"]["float_weighted_ops"] == 1  # only the DFL's fixed conv
    # first-iteration losses of an intact model (BatchNorm folded, not wrecked): well below 2 each
    assert all(0 < v < 2.5 for v in q["first_losses"].values())
    assert "Quantization-aware fine-tuning" in stem.with_suffix(".report.md").read_text()
    onnx.checker.check_model(onnx.load(str(qat_labels)))
    float_onnx = Path(q["float_model"])
    table = CalibrationTable.load(q["cache"])
    assert table.model_sha256 == sha256_file(float_onnx)
    acts = {a["tensor"]: a["amax"] for a in report["quantized_activations"]}
    assert all(table.amax[t] == pytest.approx(a) for t, a in acts.items())
    r = CliRunner().invoke(main, ["inspect", str(qat_labels)])
    assert r.exit_code == 0, r.output
    m = compare(float_onnx, qat_labels, val_yaml.parent / "images" / "val2017", num_images=2)
    assert m["outputs"]["output0"]["cosine"] > 0.9


def test_fake_quant_model_matches_the_exported_qdq_onnx(base_onnx: Path, yolo_pt: Path, val_yaml: Path, tmp_path: Path) -> None:
    """Every Q/DQ pair of the ONNX has a PyTorch quantizer producing the same values (up to rare one-step flips
    from float rounding differences upstream), and the model outputs agree."""
    import onnxruntime as ort

    from trtq.amax import activation_amax, collect_statistics
    from trtq.headpolicy import head_keep_float
    from trtq.images import ImageBatcher
    from trtq.qat import insert_fake_quant, load_detection_model, map_placement
    from trtq.qdq import plan_qdq
    from trtq.quantize import write_qdq

    fm = onnx.load(str(base_onnx))
    plan = plan_qdq(fm, keep_float=head_keep_float(fm, quantize_head=True))
    hists, _ = collect_statistics(base_onnx, val_yaml, plan.activation_tensors, num_images=4, progress=False)
    amax, _ = activation_amax(hists, plan.activation_tensors, "percentile", graph_inputs=["images"])
    qdq = write_qdq(base_onnx, amax, QuantizeOptions(quantize_head=True),
                    output=tmp_path / "q.onnx", write_report=False)
    _, net = load_detection_model(yolo_pt)
    placement = map_placement(net, fm, plan, qdq.amax)
    quantizers = insert_fake_quant(net, placement)
    assert set(quantizers) == set(plan.activations)
    net.eval()

    qm = onnx.load(str(qdq.path))
    producer = {o: n for n in qm.graph.node for o in n.output}
    dq_of = {}
    for n in qm.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in producer and producer[n.input[0]].op_type == "QuantizeLinear":
            src = producer[n.input[0]].input[0]
            if src in quantizers:
                dq_of[src] = n.output[0]
    assert set(dq_of) == set(quantizers)
    for name in dq_of.values():
        qm.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(qm.SerializeToString(), providers=["CPUExecutionProvider"])
    x = next(iter(ImageBatcher(val_yaml.parent / "images" / "val2017", imgsz=IMGSZ, num_images=1)))["images"]
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x}), strict=True))

    seen: dict[str, np.ndarray] = {}

    def record(tensor: str):  # noqa: ANN202
        def hook(module: object, inputs: object, output: torch.Tensor) -> None:
            seen.setdefault(tensor, output.detach().numpy().copy())

        return hook

    for tensor, q in quantizers.items():
        q.register_forward_hook(record(tensor))
    with torch.no_grad():
        y = net(torch.from_numpy(x))[0].numpy()
    assert set(seen) == set(quantizers)
    stats = {}
    for tensor, dq in dq_of.items():
        a, b = seen[tensor], outs[dq]
        steps = np.abs(a - b) / float(quantizers[tensor].scale)
        assert np.allclose(steps, np.round(steps), atol=1e-3), tensor  # both on the same INT8 grid
        stats[tensor] = (np.count_nonzero(steps > 0.5) / a.size, float(steps.max()))
    # The same codes in the stem; deeper, codes that float rounding upstream put on the other side of a step
    # propagate (more at every layer), but the values stay on the same INT8 grid everywhere (checked above).
    stem = list(plan.activations)[:8]
    assert all(stats[t][0] <= 1e-4 for t in stem), {t: stats[t] for t in stem}
    ref = outs["output0"]
    float_ref = ort.InferenceSession(str(base_onnx), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    # the PyTorch model reproduces the Q/DQ ONNX's quantization error (measured: 0.42 and 0.92)
    assert np.abs(y - ref).mean() < 0.6 * np.abs(float_ref - ref).mean()
    assert np.corrcoef((y - float_ref).ravel(), (ref - float_ref).ravel())[0, 1] > 0.8


def test_interrupted_run_leaves_no_output(monkeypatch: pytest.MonkeyPatch, yolo_pt: Path, val_yaml: Path, tmp_path: Path) -> None:
    import trtq.qat.pipeline as qat_mod

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(qat_mod, "label_finetune", boom)
    with pytest.raises(KeyboardInterrupt):
        qat_mod.qat(yolo_pt, data=val_yaml, imgsz=IMGSZ, output=tmp_path / "x.onnx", calib_images=2, num_images=2,
                    progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_errors_are_one_line(yolo_onnx: Path, yolo_pt: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["qat", str(yolo_onnx), "--data", "x.yaml"])
    assert r.exit_code == 2 and ".pt" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["qat", str(yolo_pt), "-o", str(tmp_path / "y.onnx")])
    assert r.exit_code == 2 and "--data" in r.output
    r = CliRunner().invoke(main, ["qat", str(yolo_pt), "--distill", "--calib", str(tmp_path), "--epochs", "0"])
    assert r.exit_code == 2 and "--epochs" in r.output
