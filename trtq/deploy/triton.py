"""``trtq deploy triton``: a Triton Inference Server model repository.

Layout and fields from Triton's ``docs/user_guide/model_configuration.md`` and ``model_repository.md``
(``<repo>/<model>/config.pbtxt``, ``<repo>/<model>/<version>/model.plan`` / ``model.onnx``), checked against
Triton's own schema (``model_config.proto``, shipped as ``tritonclient.grpc.model_config_pb2``) by the tests.

- The plan is TensorRT's raw plan: ``trtq build`` writes no ultralytics metadata header unless
  ``--ultralytics-header`` is given (a header breaks Triton's deserialization: ultralytics #3088, #15025,
  TensorRT #2915), so the finishing command never passes it.
- ``parameters { key: "metadata" }`` holds ultralytics' metadata as a Python literal: ultralytics'
  ``TritonRemoteModel`` (``ultralytics/utils/triton.py``, 8.4: ``ast.literal_eval(config.get("parameters",
  {}).get("metadata", {}).get("string_value", "None"))``) reads it, and ``BaseBackend.apply_metadata``
  (``ultralytics/nn/backends/base.py``) takes names, stride, imgsz, task, batch and end2end from it.
- The inputs and outputs keep ultralytics' names and layout (``images``, ``output0``...), which ultralytics'
  client sorts by name and decodes as it decodes its own ONNX.
- ``max_batch_size`` > 0 with ``dims`` excluding the batch axis; ``dynamic_batching`` up to the engine profile's
  max batch; ``cc_model_filenames`` maps compute capabilities to plan files.
- ``--target cpu``: trtq's ONNX Runtime INT8 model, ``platform: "onnxruntime_onnx"``, ``KIND_CPU`` instances.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from trtq.deploy.bundle import DeployResult, prepare_onnx, quantize_explicit, staged_folder
from trtq.errors import TrtqError
from trtq.modelinfo import ModelInfo

logger = logging.getLogger(__name__)

_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int32": "TYPE_INT32",
          "int64": "TYPE_INT64"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_CC = re.compile(r"^\d+\.\d+$")


def _dims(shape: Sequence[int | None]) -> str:
    return ", ".join("-1" if d is None else str(int(d)) for d in shape)


def _tensor(spec: Any) -> str:
    dtype = _TYPES.get(spec.dtype)
    if dtype is None:
        raise TrtqError(f"tensor {spec.name!r} has type {spec.dtype}, which the config cannot describe")
    return f'  {{\n    name: "{spec.name}"\n    data_type: {dtype}\n    dims: [ {_dims(spec.shape[1:])} ]\n  }}'


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def metadata_literal(info: ModelInfo, batch: int) -> str:
    """ultralytics' metadata as the Python literal its Triton client evaluates."""
    meta: dict[str, Any] = {}
    for key in ("description", "author", "version", "license", "docs", "stride", "task", "imgsz", "names",
                "kpt_shape", "end2end", "args", "channels"):
        if key in info.metadata:
            meta[key] = info.metadata[key]
    meta["stride"] = info.stride
    meta["imgsz"] = list(info.imgsz)
    meta["names"] = dict(info.names)
    meta["batch"] = int(batch)
    meta.setdefault("task", "detect")
    return repr(meta)


def model_config(info: ModelInfo, *, name: str, platform: str, max_batch: int, instances: int,
                 kind: str, cc_plans: Mapping[str, str] | None = None) -> str:
    """``config.pbtxt`` in protobuf text format."""
    lines = [
        f"name: {_quote(name)}",
        f"platform: {_quote(platform)}",
        f"max_batch_size: {max_batch}",
        "input [",
        ",\n".join(_tensor(s) for s in info.inputs),
        "]",
        "output [",
        ",\n".join(_tensor(s) for s in info.outputs),
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {max_batch} ]",
        "  max_queue_delay_microseconds: 100",
        "}",
        "instance_group [",
        f"  {{\n    count: {instances}\n    kind: {kind}\n  }}",
        "]",
        "parameters {",
        '  key: "metadata"',
        f"  value {{ string_value: {_quote(metadata_literal(info, max_batch))} }}",
        "}",
    ]
    for cc, plan in sorted((cc_plans or {}).items()):
        lines.append(f"cc_model_filenames {{ key: {_quote(cc)} value: {_quote(plan)} }}")
    return "\n".join(lines) + "\n"


def parse_cc(items: Sequence[str]) -> dict[str, str]:
    """``--cc 8.7=orin.plan`` -> ``{"8.7": "orin.plan"}``."""
    out: dict[str, str] = {}
    for item in items:
        cc, sep, plan = item.partition("=")
        if not sep or not _CC.match(cc) or not plan or "/" in plan or not plan.endswith(".plan"):
            raise TrtqError(f"--cc {item!r}: expected COMPUTE_CAPABILITY=FILE.plan, e.g. 8.7=orin.plan")
        out[cc] = plan
    return out


def _static_batch_ok(info: ModelInfo) -> None:
    if info.input.shape and info.input.shape[0] is not None:
        raise TrtqError(f"{info.path.name} has a static batch; Triton's dynamic batching needs a dynamic-batch ONNX "
                        "(pass the .pt, or export with --dynamic)")


def _build_command(repo_model: Path, onnx_name: str, *, precision: str, mode: str, batch: int,
                   cache: str | None, plan: str = "model.plan") -> str:
    ver = repo_model / "1"
    parts = [f"trtq build {ver / onnx_name}"]
    if precision == "fp16":
        parts.append("--fp16")
    elif mode == "implicit":
        parts.append(f"--int8 --cache {ver / str(cache)} --mode implicit")
    parts.append(f"--min-batch 1 --opt-batch {batch} --max-batch {batch} -o {ver / plan}")
    return " ".join(parts)


def write_triton(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    calib: str | None,
    precision: str = "int8",
    mode: str = "explicit",
    target: str = "tensorrt",
    batch: int = 8,
    instances: int = 1,
    cc_plans: Sequence[str] = (),
    name: str | None = None,
    imgsz: int = 640,
    num_images: int | None = None,
    seed: int = 0,
) -> DeployResult:
    """Write the model repository ``output`` (atomically) with one model, ``name`` (default: the model's stem)."""
    from calibrators.ranges import DEFAULT_ALGO, DEFAULT_PERCENTILE

    name = name or Path(model).stem
    if not _NAME.match(name):
        raise TrtqError(f"model name {name!r}: use letters, digits, '_', '-' and '.' only")
    if precision == "int8" and not calib:
        raise TrtqError("INT8 needs calibration images: pass --calib DIR (or --fp16)")
    if target == "cpu" and precision != "int8":
        raise TrtqError("--target cpu serves trtq's CPU INT8 ONNX: drop --fp16")
    ccs = parse_cc(cc_plans)
    if target == "cpu" and ccs:
        raise TrtqError("--cc applies to TensorRT plans, not --target cpu")
    with tempfile.TemporaryDirectory(prefix="trtq-deploy-") as tmp:
        work = Path(tmp)
        src, info, _ = prepare_onnx(model, work, batch=batch, dynamic=True, imgsz=imgsz)
        _static_batch_ok(info)
        with staged_folder(output) as stage:
            model_dir = stage / name
            version = model_dir / "1"
            version.mkdir(parents=True)
            result = DeployResult(Path(output))
            final_dir = Path(output) / name
            if target == "cpu":
                from trtq.cpu_target import quantize_cpu
                from trtq.quantize_options import TARGET_CPU, QuantizeOptions

                options = QuantizeOptions(target=TARGET_CPU, num_images=num_images, seed=seed, progress=False)
                quantize_cpu(src, str(calib), options, output=version / "model.onnx")
                for extra in version.iterdir():
                    if extra.name != "model.onnx":
                        extra.unlink()
                platform, kind = "onnxruntime_onnx", "KIND_CPU"
                result.notes.append("ready to serve: tritonserver --model-repository " + str(Path(output)))
            else:
                platform, kind = "tensorrt_plan", "KIND_GPU"
                onnx_name, cache = "model.onnx", None
                if precision == "int8":
                    table, _ = calibrate_letterbox(src, str(calib), info, num_images=num_images, seed=seed,
                                                           algo=DEFAULT_ALGO, percentile=DEFAULT_PERCENTILE)
                    if mode == "explicit":
                        onnx_name = "model.int8.onnx"
                        onnx.save(quantize_explicit(src, table, work), str(version / onnx_name))
                    else:
                        shutil.copyfile(src, version / onnx_name)
                        cache = "model.cache"
                        table.save(version / cache)
                else:
                    shutil.copyfile(src, version / onnx_name)
                cmd = _build_command(final_dir, onnx_name, precision=precision, mode=mode, batch=batch, cache=cache)
                (version / "BUILD.md").write_text(_build_notes(cmd, ccs))
                result.notes.append(f"on the target, build the plan: {cmd}")
            (model_dir / "config.pbtxt").write_text(model_config(
                info, name=name, platform=platform, max_batch=batch, instances=instances, kind=kind, cc_plans=ccs))
            result.files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
    return result


def calibrate_letterbox(model: Path, source: str, info: ModelInfo, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """Triton clients (ultralytics' included) letterbox as ultralytics does: calibrate with trtq's own
    preprocessing (:class:`trtq.images.ImageBatcher`), not nvinfer's."""
    from calibrators.calibrate import calibrate

    res = calibrate(model, source, algo=kwargs["algo"], percentile=kwargs["percentile"],
                    num_images=kwargs.get("num_images"), seed=kwargs.get("seed", 0), write=False, progress=False)
    return res.table, res.histograms


def _build_notes(cmd: str, ccs: Mapping[str, str]) -> str:
    lines = [
        "# Building the plan",
        "",
        "On the GPU machine that serves the model (TensorRT and trtq installed), from the repository's parent folder:",
        "",
        "```bash",
        cmd,
        "```",
        "",
        "The plan is TensorRT's raw plan (no `--ultralytics-header`: Triton cannot deserialize a plan with it).",
        "A plan is tied to the GPU's compute capability and the TensorRT version of Triton's container.",
    ]
    if ccs:
        lines += ["", "This config maps compute capabilities to plan files (`cc_model_filenames`); build each on its GPU:"]
        lines += [f"- {cc}: `{plan}` (same command, `-o .../1/{plan}`)" for cc, plan in sorted(ccs.items())]
    lines += [
        "",
        "Version-compatible plans (`trtq build --version-compatible`) also need",
        "`tritonserver --backend-config=tensorrt,version-compatible=true`.",
        "",
        "Then: `tritonserver --model-repository <repo>`, and from Python:",
        '`YOLO("http://localhost:8000/<name>", task="detect")`.',
    ]
    return "\n".join(lines) + "\n"


__all__ = ["metadata_literal", "model_config", "parse_cc", "write_triton"]
