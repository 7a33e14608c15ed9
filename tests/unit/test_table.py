"""CalibrationTable and the TensorRT calibration cache format."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from calibrators import table as table_mod
from calibrators.table import (
    CalibrationTable,
    format_trt_cache,
    parse_trt_cache,
    rewrite_cache_header,
    table_sidecar_path,
    trt_version_code,
)
from trtq.errors import TrtqError

MODEL_SHA = "0ef35ab8" + "a" * 56
OTHER_SHA = "1234abcd" + "b" * 56
PREPROCESSING = {
    "imgsz": [640, 640],
    "stride": 32,
    "pad_value": 114,
    "auto": False,
    "scaleup": True,
    "center": True,
    "color": "RGB",
    "scale": 1 / 255,
    "layout": "NCHW",
    "batch": 1,
}


def make_table(**overrides: object) -> CalibrationTable:
    kwargs: dict[str, object] = {
        "amax": {"images": 1.0, "/model.0/conv/Conv_output_0": 127.0, "/model.22/Concat_3_output_0": 640.0},
        "algorithm": "entropy",
        "percentile": None,
        "model_sha256": MODEL_SHA,
        "num_images": 128,
        "images_sha256": "c" * 64,
        "preprocessing": PREPROCESSING,
        "trtq_version": "0.1.0",
        "tensorrt_version": "10.3.0",
        "created": "2026-01-01T00:00:00+00:00",
    }
    kwargs.update(overrides)
    return CalibrationTable(**kwargs)  # type: ignore[arg-type]


def be_hex(x: float) -> str:
    """Big-endian float32 bytes as hex, computed independently of the module under test."""
    b = struct.pack(">f", x)
    assert b == struct.pack("<f", x)[::-1]
    return b.hex()


# --------------------------------------------------------------------------------------------------
# byte format
# --------------------------------------------------------------------------------------------------


def test_scale_encoding_is_big_endian_float32() -> None:
    # independent checks of the hand-written expectations below
    assert be_hex(1.0) == "3f800000"
    assert be_hex(1.0 / 127) == "3c010204"
    assert be_hex(640.0 / 127) == "40a14285"
    assert struct.unpack(">I", bytes.fromhex("3c010204"))[0] == 0x3C010204


def test_cache_bytes_exact() -> None:
    expected = (
        b"TRT-100300-EntropyCalibration2\n"
        b"images: 3c010204\n"
        b"/model.0/conv/Conv_output_0: 3f800000\n"
        b"/model.22/Concat_3_output_0: 40a14285\n"
    )
    assert make_table().to_trt_cache() == expected


def test_not_little_endian() -> None:
    data = make_table(amax={"t": 1.0}).to_trt_cache()
    little = struct.pack("<f", 1.0 / 127).hex()
    assert little == "0402013c"
    assert little.encode() not in data
    assert b"t: 3c010204\n" in data


@pytest.mark.parametrize(
    ("version", "code"),
    [
        ("8.6.1", 8601),
        ("8.5.2", 8502),
        ("9.1.0", 9100),  # 9.x headers keep the MAJOR*1000 form: TRT-9100, TRT-9300
        ("9.3.0", 9300),
        ("9.2.0.5", 9200),
        ("10.3.0", 100300),
        ("10.13.0", 101300),
        ("10.13.0.35", 101300),
        ("10.7.0", 100700),
        ("11.0.0", 110000),
        ("10.0.0b6", 100000),
    ],
)
def test_trt_version_code(version: str, code: int) -> None:
    assert trt_version_code(version) == code


@pytest.mark.parametrize(
    "bad", ["", "abc", "10", "10.x.0", "-1.2.3", "8.10.1", "10.3.100", "TRT-100300", "10.3.0 foo"]
)
def test_trt_version_code_rejects_garbage(bad: str) -> None:
    with pytest.raises(TrtqError, match="TensorRT version"):
        trt_version_code(bad)


@pytest.mark.parametrize(
    ("version", "algo", "header"),
    [
        ("8.6.1", "entropy", "TRT-8601-EntropyCalibration2"),
        ("10.3.0", "percentile", "TRT-100300-EntropyCalibration2"),
        ("9.3.0", "entropy", "TRT-9300-EntropyCalibration2"),
        ("10.13.0.35", "mse", "TRT-101300-EntropyCalibration2"),
        ("11.0.0", "minmax", "TRT-110000-MinMaxCalibration"),
    ],
)
def test_headers(version: str, algo: str, header: str) -> None:
    t = make_table(algorithm=algo, percentile=99.9 if algo == "percentile" else None)
    assert t.to_trt_cache(version).split(b"\n", 1)[0] == header.encode()
    assert (
        make_table(algorithm=algo, tensorrt_version=version)
        .to_trt_cache()
        .startswith(header.encode() + b"\n")
    )


def test_trt_algorithm_property() -> None:
    assert make_table(algorithm="entropy").trt_algorithm == "EntropyCalibration2"
    assert make_table(algorithm="percentile").trt_algorithm == "EntropyCalibration2"
    assert make_table(algorithm="mse").trt_algorithm == "EntropyCalibration2"
    assert make_table(algorithm="minmax").trt_algorithm == "MinMaxCalibration"


def test_order_preserved_and_deterministic() -> None:
    names = [f"t{i}" for i in range(50)][::-1]
    amax = {n: 0.5 + i for i, n in enumerate(names)}
    a = make_table(amax=amax, created="2026-01-01T00:00:00+00:00").to_trt_cache()
    b = make_table(amax=dict(amax), created="2027-06-01T00:00:00+00:00").to_trt_cache()
    assert a == b
    lines = a.decode().splitlines()
    assert [ln.split(": ")[0] for ln in lines[1:]] == names


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), 1e-45, 1e41, "x"])
def test_bad_amax_rejected(bad: object) -> None:
    with pytest.raises(TrtqError, match="amax of tensor 'x'|scale of tensor 'x'"):
        make_table(amax={"ok": 1.0, "x": bad})


def test_bad_construction_rejected() -> None:
    with pytest.raises(TrtqError, match="unknown calibration algorithm"):
        make_table(algorithm="kl")
    with pytest.raises(TrtqError, match="empty"):
        make_table(amax={})
    with pytest.raises(TrtqError, match="invalid tensor name"):
        make_table(amax={"a\nb": 1.0})
    with pytest.raises(TrtqError, match="TensorRT version"):
        make_table(tensorrt_version="ten")
    with pytest.raises(TrtqError, match="percentile"):
        make_table(algorithm="percentile", percentile=101.0)


# --------------------------------------------------------------------------------------------------
# parsing caches (trtq's and TensorRT's own)
# --------------------------------------------------------------------------------------------------


def test_parse_tensorrt_style_cache() -> None:
    text = (
        "TRT-8601-EntropyCalibration2\r\n"
        "images: 3c010204\r\n"
        "(Unnamed Layer* 3) [Convolution]_output: 3d4ccccd\r\n"
        "onnx::Mul_5: 3f800000\r\n"
        "weird: name: with: colons: 40000000\r\n"
        "short: 1\r\n"
    )
    header, scales = parse_trt_cache(text.encode())
    assert header == "TRT-8601-EntropyCalibration2"
    assert list(scales) == [
        "images",
        "(Unnamed Layer* 3) [Convolution]_output",
        "onnx::Mul_5",
        "weird: name: with: colons",
        "short",
    ]
    assert scales["images"] == struct.unpack(">f", bytes.fromhex("3c010204"))[0]
    assert scales["(Unnamed Layer* 3) [Convolution]_output"] == pytest.approx(0.05)
    assert scales["onnx::Mul_5"] == 1.0
    assert scales["weird: name: with: colons"] == 2.0
    assert scales["short"] == struct.unpack(">f", bytes.fromhex("00000001"))[0]
    # no trailing newline
    assert parse_trt_cache(b"TRT-100300-MinMaxCalibration\nx: 3f800000") == (
        "TRT-100300-MinMaxCalibration",
        {"x": 1.0},
    )


def test_parse_round_trip_of_own_cache() -> None:
    t = make_table()
    header, scales = parse_trt_cache(t.to_trt_cache())
    assert header == t.header()
    assert list(scales) == list(t.amax)
    for name, a in t.amax.items():
        assert scales[name] == struct.unpack(">f", struct.pack(">f", a / 127))[0]
    assert format_trt_cache(scales, header) == t.to_trt_cache()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        (b"\xff\xfe", "not text"),
        (b"hello\nx: 3f800000\n", "not of the form"),
        (b"TRT-8601-EntropyCalibration2\nx 3f800000\n", "line 2"),
        (b"TRT-8601-EntropyCalibration2\nx: 3f80000000\n", "line 2"),
        (b"TRT-8601-EntropyCalibration2\nx: zz\n", "line 2"),
        (b"TRT-8601-EntropyCalibration2\n: 3f800000\n", "line 2"),
        (b"TRT-8601-EntropyCalibration2\nx: 3f800000\nx: 3f800000\n", "twice"),
    ],
)
def test_parse_rejects_corrupt(data: bytes, match: str) -> None:
    with pytest.raises(TrtqError, match=match):
        parse_trt_cache(data)


def test_rewrite_cache_header_keeps_scale_lines() -> None:
    original = make_table().to_trt_cache()
    out = rewrite_cache_header(original, "8.6.1", "EntropyCalibration2")
    assert out.startswith(b"TRT-8601-EntropyCalibration2\n")
    assert out.split(b"\n", 1)[1] == original.split(b"\n", 1)[1]
    out2 = rewrite_cache_header(original, "10.13.0.35", "minmax")
    assert out2.split(b"\n", 1)[0] == b"TRT-101300-MinMaxCalibration"
    assert out2.split(b"\n", 1)[1] == original.split(b"\n", 1)[1]
    # a TensorRT-made CRLF cache keeps its line ends byte for byte
    crlf = b"TRT-8601-EntropyCalibration2\r\nimages: 3c010204\r\n"
    assert (
        rewrite_cache_header(crlf, "10.3.0", "entropy")
        == b"TRT-100300-EntropyCalibration2\r\nimages: 3c010204\r\n"
    )
    with pytest.raises(TrtqError):
        rewrite_cache_header(b"not a cache\n", "10.3.0", "entropy")
    with pytest.raises(TrtqError, match="unknown calibration algorithm"):
        rewrite_cache_header(original, "10.3.0", "Entropy3")


# --------------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    t = make_table(
        amax={"a": 0.1, "b": 3.14159265358979, "c:d": 1e-3}, algorithm="percentile", percentile=99.99
    )
    cache = tmp_path / "sub" / "model.cache"
    t.save(cache)
    assert sorted(p.name for p in cache.parent.iterdir()) == ["model.cache", "model.cache.json"]
    assert cache.read_bytes() == t.to_trt_cache()
    loaded = CalibrationTable.load(cache)
    assert loaded == t
    assert loaded.to_trt_cache() == t.to_trt_cache()
    # saving the loaded table again gives identical bytes (deterministic)
    cache2 = tmp_path / "again.cache"
    loaded.save(cache2)
    assert cache2.read_bytes() == cache.read_bytes()
    assert table_sidecar_path(cache2).read_bytes() == table_sidecar_path(cache).read_bytes()


def test_sidecar_contents(tmp_path: Path) -> None:
    cache = make_table().save(tmp_path / "c.cache")
    record = json.loads(table_sidecar_path(cache).read_text())
    for key in (
        "format",
        "algorithm",
        "percentile",
        "trt_algorithm",
        "header",
        "tensorrt_version",
        "num_images",
        "images_sha256",
        "preprocessing",
        "model_sha256",
        "trtq_version",
        "created",
        "tensors",
    ):
        assert key in record, key
    assert record["header"] == "TRT-100300-EntropyCalibration2"
    assert record["tensors"]["images"] == {"amax": 1.0, "scale": 1.0 / 127}
    assert list(record["tensors"]) == ["images", "/model.0/conv/Conv_output_0", "/model.22/Concat_3_output_0"]
    assert record["preprocessing"]["imgsz"] == [640, 640]


def test_atomic_save_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fail while the second file is being flushed, after the first one was fully written.
    calls = {"n": 0}
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            real_fsync(fd)
            return
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        make_table().save(tmp_path / "c.cache")
    assert calls["n"] == 2
    assert list(tmp_path.iterdir()) == []


def test_atomic_save_keeps_previous_pair_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = make_table(amax={"x": 2.0})
    cache = old.save(tmp_path / "c.cache")
    before = (cache.read_bytes(), table_sidecar_path(cache).read_bytes())

    def boom(self: CalibrationTable) -> dict[str, object]:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(CalibrationTable, "to_sidecar", boom)
    with pytest.raises(RuntimeError):
        make_table(amax={"x": 3.0}).save(cache)
    assert (cache.read_bytes(), table_sidecar_path(cache).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.cache", "c.cache.json"]


def test_load_errors(tmp_path: Path) -> None:
    cache = tmp_path / "c.cache"
    with pytest.raises(TrtqError, match="not found"):
        CalibrationTable.load(cache)
    cache.write_bytes(make_table().to_trt_cache())
    with pytest.raises(TrtqError, match=r"no record c\.cache\.json"):
        CalibrationTable.load(cache)

    make_table().save(cache)
    side = table_sidecar_path(cache)
    good = side.read_text()

    side.write_text("{not json")
    with pytest.raises(TrtqError, match="corrupt"):
        CalibrationTable.load(cache)

    record = json.loads(good)
    del record["tensors"]
    side.write_text(json.dumps(record))
    with pytest.raises(TrtqError, match="corrupt"):
        CalibrationTable.load(cache)

    record = json.loads(good)
    record["format"] = 99
    side.write_text(json.dumps(record))
    with pytest.raises(TrtqError, match="format"):
        CalibrationTable.load(cache)

    record = json.loads(good)
    record["tensors"]["images"]["amax"] = 2.0
    side.write_text(json.dumps(record))
    with pytest.raises(TrtqError, match="scale"):
        CalibrationTable.load(cache)

    record = json.loads(good)
    record["tensors"]["images"]["amax"] = -2.0
    side.write_text(json.dumps(record))
    with pytest.raises(TrtqError, match="amax"):
        CalibrationTable.load(cache)

    side.write_text(good)
    cache.write_bytes(rewrite_cache_header(cache.read_bytes(), "8.6.1", "entropy"))
    with pytest.raises(TrtqError, match="header"):
        CalibrationTable.load(cache)

    cache.write_bytes(make_table(amax={"images": 1.0}).to_trt_cache())
    with pytest.raises(TrtqError, match="different tensors"):
        CalibrationTable.load(cache)

    # every error is one line
    try:
        CalibrationTable.load(cache)
    except TrtqError as exc:
        assert "\n" not in str(exc)


# --------------------------------------------------------------------------------------------------
# staleness
# --------------------------------------------------------------------------------------------------


def test_differences() -> None:
    t = make_table()
    assert t.differences() == []
    assert t.differences(model_sha256=MODEL_SHA, preprocessing=dict(PREPROCESSING), algorithm="entropy") == []
    # tuples compare equal to the lists JSON gives back; batch does not change the statistics
    same = dict(PREPROCESSING, imgsz=(640, 640), batch=8)
    assert t.differences(preprocessing=same) == []

    diffs = t.differences(
        model_sha256=OTHER_SHA,
        preprocessing=dict(PREPROCESSING, imgsz=[320, 320]),
        algorithm="minmax",
    )
    assert diffs == [
        "model sha256 differs: cache made from 0ef35ab8\u2026, this model is 1234abcd\u2026",
        "preprocessing differs: imgsz [640, 640] vs [320, 320]",
        "algorithm differs: cache made with entropy, this build asks for minmax",
    ]
    more = t.differences(preprocessing=dict(PREPROCESSING, pad_value=0, extra="x"))
    assert more == ['preprocessing differs: pad_value 114 vs 0; extra (absent) vs "x"']

    p = make_table(algorithm="percentile", percentile=99.99)
    assert p.differences(algorithm="percentile", percentile=99.99) == []
    assert p.differences(algorithm="percentile", percentile=99.9) == [
        "percentile differs: cache made with 99.99, this build asks for 99.9"
    ]
    assert t.differences(images_sha256="d" * 64) == [
        "calibration images differ: cache made from image list cccccccc\u2026, this build uses dddddddd\u2026"
    ]


def test_table_module_constants() -> None:
    assert table_mod.TRT_ALGORITHM == {
        "entropy": "EntropyCalibration2",
        "percentile": "EntropyCalibration2",
        "mse": "EntropyCalibration2",
        "minmax": "MinMaxCalibration",
    }
