"""QuantizeOptions: every rule that needs no model, in one place, with one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from calibrators.ranges import DEFAULT_ALGO
from tests.conftest import make_tiny_conv_onnx
from trtq.errors import TrtqError
from trtq.quantize_options import CPU_DEFAULT_ALGO, QuantizeOptions

# (option, a non-default value, the flag the error names, the target it belongs to)
TARGET_ONLY: list[tuple[str, Any, str, str]] = [
    ("max_drop", 0.5, "--max-drop", "tensorrt"),
    ("cache", "x.cache", "--cache", "tensorrt"),
    ("unify_concat", False, "--no-concat-unify", "tensorrt"),
    ("int8_weights", True, "--int8-weights", "tensorrt"),
    ("quantize_head", True, "--quantize-head", "tensorrt"),
    ("per_channel", False, "per_channel=False", "tensorrt"),
    ("residual_add", False, "residual_add=False", "tensorrt"),
    ("reduce_range", True, "--reduce-range", "cpu"),
    ("cpu_isa", "avx2", "--cpu-isa", "cpu"),
    ("activations", "s8", "activations", "cpu"),
    ("silu", "float", "silu", "cpu"),
]


def _error(options: QuantizeOptions) -> str:
    with pytest.raises(TrtqError) as info:
        options.validate()
    text = str(info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(("name", "value", "flag", "target"), TARGET_ONLY, ids=[t[0] for t in TARGET_ONLY])
def test_an_option_of_the_other_target_is_refused_by_its_flag(name: str, value: Any, flag: str, target: str) -> None:
    extra = {"data": "d.yaml"} if name == "max_drop" else {}
    QuantizeOptions(target=target, **{name: value}, **extra).validate()  # fine on its own target
    other = "cpu" if target == "tensorrt" else "tensorrt"
    text = _error(QuantizeOptions(target=other, **{name: value}, **extra))
    assert text == f"{flag} applies to --target {target} only; drop it for --target {other}"


def test_every_wrong_target_option_is_named_at_once() -> None:
    text = _error(QuantizeOptions(target="cpu", unify_concat=False, int8_weights=True, quantize_head=True))
    assert text.startswith("--no-concat-unify, --int8-weights, --quantize-head applies to --target tensorrt only")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"target": "gpu"}, "unknown target 'gpu'; choose one of tensorrt, cpu"),
    ({"algo": "kl"}, "unknown calibration algorithm 'kl'"),
    ({"algo": "percentile", "percentile": 0}, "percentile must be in (0, 100]"),
    ({"batch": 0}, "--batch must be at least 1, got 0"),
    ({"num_images": 0}, "--num-images must be at least 1, got 0"),
    ({"seed": -1}, "--seed must be at least 0, got -1"),
    ({"max_drop": 0.5}, "--max-drop needs labelled data"),
    ({"max_drop": -1.0, "data": "d.yaml"}, "--max-drop must be >= 0 mAP points, got -1.0"),
    ({"target": "cpu", "cpu_isa": "sse2"}, "unknown CPU ISA 'sse2'"),
    ({"target": "cpu", "activations": "u4"}, "unknown activation type 'u4'; choose one of u8, s8"),
    ({"target": "cpu", "silu": "half"}, "unknown SiLU mode 'half'; choose one of int, float"),
])
def test_bad_values_are_one_line_user_errors(kwargs: dict[str, Any], message: str) -> None:
    assert _error(QuantizeOptions(**kwargs)).startswith(message)


def test_a_percentile_is_checked_only_where_it_is_used() -> None:
    QuantizeOptions(algo="mse", percentile=0).validate()
    _error(QuantizeOptions(algo="auto", percentile=0))
    _error(QuantizeOptions(target="cpu", algo="percentile", percentile=101))


def test_default_algorithm_follows_the_target_and_options_are_frozen_and_hashable() -> None:
    assert QuantizeOptions().algorithm == DEFAULT_ALGO
    assert QuantizeOptions(target="cpu").algorithm == CPU_DEFAULT_ALGO != DEFAULT_ALGO
    assert QuantizeOptions(target="cpu", algo="entropy").algorithm == "entropy"
    options = QuantizeOptions(exclude=["/model.4/Conv"])
    assert options.exclude == ("/model.4/Conv",) and QuantizeOptions(exclude="/a/*").exclude == ("/a/*",)
    assert hash(options) == hash(QuantizeOptions(exclude=("/model.4/Conv",)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.algo = "mse"  # pyright: ignore[reportAttributeAccessIssue]


def test_each_writer_refuses_the_other_targets_options(tmp_path: Path) -> None:
    from trtq.cpu_target import quantize_cpu
    from trtq.quantize import quantize, write_qdq

    model = make_tiny_conv_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(TrtqError, match="for --target cpu: quantize them with trtq.cpu_target.quantize_cpu"):
        quantize(model, tmp_path, QuantizeOptions(target="cpu"))
    with pytest.raises(TrtqError, match="for --target cpu"):
        write_qdq(model, {}, QuantizeOptions(target="cpu"))
    with pytest.raises(TrtqError, match="for --target tensorrt: quantize them with trtq.quantize.quantize"):
        quantize_cpu(model, tmp_path, QuantizeOptions())
    # the options are checked before the model is read or an image looked for
    with pytest.raises(TrtqError, match="--cpu-isa applies to --target cpu only"):
        quantize(tmp_path / "missing.onnx", tmp_path / "nothing", QuantizeOptions(cpu_isa="avx2"))


def test_cli_names_every_tensorrt_only_flag_given_with_target_cpu(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    from trtq.cli import main

    out = tmp_path / "q.onnx"
    res = CliRunner().invoke(main, ["quantize", str(tiny_conv_onnx), "--calib", str(tmp_path), "--target", "cpu",
                                    "--no-concat-unify", "--int8-weights", "--quantize-head", "-o", str(out)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert ("--no-concat-unify, --int8-weights, --quantize-head applies to --target tensorrt only; "
            "drop it for --target cpu") in res.output
    assert not out.exists()
