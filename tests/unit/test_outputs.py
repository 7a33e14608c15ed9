"""Output paths and interrupted runs: `-o` checked before any work, files of a result landing as one set,
SIGTERM/SIGINT leaving nothing behind (real subprocesses, signals sent at chosen points)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import make_tiny_conv_onnx
from trtq import fileio
from trtq.cli import main
from trtq.errors import Terminated, TrtqError, terminate_as_interrupt

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with a tiny model m.onnx and four images in imgs/."""
    make_tiny_conv_onnx(tmp_path / "m.onnx")
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        img = np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "imgs" / f"i{i}.jpg"), img)
    return tmp_path


def run(cwd: Path, *args: str) -> tuple[int, str]:
    old = Path.cwd()
    os.chdir(cwd)
    try:
        res = CliRunner().invoke(main, list(args))
    finally:
        os.chdir(old)
    return res.exit_code, res.output


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------------------ -o checks
def test_output_onto_the_model_is_refused_and_the_model_kept(work: Path) -> None:
    model = (work / "m.onnx").read_bytes()
    (work / "link.onnx").symlink_to(work / "m.onnx")
    (work / "sub").mkdir()
    for target in ("m.onnx", "./m.onnx", str(work / "link.onnx"), "sub/../m.onnx", str(work / "m.onnx")):
        code, text = run(work, "quantize", "m.onnx", "--calib", "imgs", "-o", target)
        assert code == 2, text
        assert "would overwrite the input" in text and "Traceback" not in text
    code, text = run(work, "quantize", "link.onnx", "--calib", "imgs", "-o", "m.onnx")
    assert code == 2 and "would overwrite the input" in text, text
    code, text = run(work, "calibrate", "m.onnx", "--calib", "imgs", "-o", "m.onnx")
    assert code == 2, text
    assert (work / "m.onnx").read_bytes() == model


def test_calibration_sidecar_that_would_overwrite_an_input_is_refused(work: Path) -> None:
    (work / "list.txt").write_text("".join(f"imgs/i{i}.jpg\n" for i in range(4)))
    (work / "c.cache.json").symlink_to(work / "list.txt")
    code, text = run(work, "calibrate", "m.onnx", "--calib", "list.txt", "-o", "c.cache")
    assert code == 2 and "its c.cache.json" in text, text
    assert not (work / "c.cache").exists()


def test_report_that_would_overwrite_an_input_is_refused(work: Path) -> None:
    (work / "q.report.json").write_text("{}")
    code, text = run(work, "quantize", "m.onnx", "--calib", "imgs", "--data", "q.report.json", "-o", "q.onnx")
    assert code == 2 and "its q.report.json" in text, text
    assert not (work / "q.onnx").exists()


@pytest.mark.parametrize(("args", "want"), [
    (["quantize", "m.onnx", "--calib", "imgs", "-o", "q.cache"], ".onnx"),
    (["calibrate", "m.onnx", "--calib", "imgs", "-o", "x.onnx"], ".cache"),
])
def test_output_extension_is_checked(work: Path, args: list[str], want: str) -> None:
    code, text = run(work, *args)
    assert code == 2 and f"must be a {want} file" in text, text
    assert listing(work) == {"m.onnx", "imgs", *(f"imgs/i{i}.jpg" for i in range(4))}


@pytest.mark.parametrize("spelling", ["out/", "out"])
def test_output_folder_gets_the_default_name_inside(work: Path, spelling: str) -> None:
    if spelling == "out":
        (work / "out").mkdir()  # an existing folder, no slash
    code, text = run(work, "calibrate", "m.onnx", "--calib", "imgs", "-o", spelling)
    assert code == 0, text
    assert (work / "out").is_dir()
    assert sorted(p.name for p in (work / "out").iterdir()) == ["m.percentile.cache", "m.percentile.cache.json"]


def test_read_only_output_folder_is_refused_before_any_work(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real = os.access  # stands in for the permission check where the tests run as root
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p).resolve() == ro else real(p, mode))
    import trtq.quantize

    def no_work(*a: object, **k: object) -> None:
        raise AssertionError("quantization started")

    monkeypatch.setattr(trtq.quantize, "quantize", no_work)
    code, text = run(work, "quantize", "m.onnx", "--calib", "imgs", "-o", "ro/q.onnx")
    assert code == 2 and "cannot write to ro" in text and "internal error" not in text, text


def test_check_writable_refuses_a_folder_without_write_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # os.access stands in for a read-only mount (works as root too)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    with pytest.raises(TrtqError, match="no write permission"):
        fileio.output_path(str(tmp_path / "sub" / "q.onnx"), tmp_path / "d.onnx", suffixes=(".onnx",))
    with pytest.raises(TrtqError, match="is not a folder"):
        (tmp_path / "file").write_text("x")
        monkeypatch.setattr(os, "access", real)
        fileio.output_path(str(tmp_path / "file" / "q.onnx"), tmp_path / "d.onnx", suffixes=(".onnx",))


# --------------------------------------------------------------------------------------------- output sets
def test_output_set_lands_all_files_or_none(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "a.json"
    with pytest.raises(RuntimeError), fileio.output_set():
        fileio.write_text(a, "model")
        assert not a.exists() and fileio.current(a).read_text() == "model"
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    with fileio.output_set():
        fileio.write_text(b, "report")
        fileio.write_text(a, "model")
        with fileio.output_set():  # a nested set joins the outer one
            fileio.write_text(b, "report 2")
        assert not a.exists() and not b.exists()
    assert a.read_text() == "model" and b.read_text() == "report 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.onnx"]


def test_the_first_file_of_a_set_lands_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    landed: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (real_replace(src, dst), landed.append(Path(dst).name)))
    with fileio.output_set():
        for name in ("m.onnx", "m.report.json", "m.report.md"):
            fileio.write_text(tmp_path / name, name)
        fileio.write_text(tmp_path / "m.onnx", "m.onnx again")  # rewritten (--max-drop): still the primary
    assert landed == ["m.report.json", "m.report.md", "m.onnx"]
    assert (tmp_path / "m.onnx").read_text() == "m.onnx again"


def test_sigterm_during_the_renames_waits_until_the_set_has_landed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = [tmp_path / f"f{i}" for i in range(3)]
    real_replace = os.replace
    calls: list[str] = []

    def replace(src: object, dst: object) -> None:
        real_replace(src, dst)  # type: ignore[arg-type]
        calls.append(str(dst))
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Terminated), terminate_as_interrupt(), fileio.output_set():
        for n in names:
            fileio.write_text(n, n.name)
    assert [p.read_text() for p in names] == ["f0", "f1", "f2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0", "f1", "f2"]


# ------------------------------------------------------------------------------------- real signals, real CLI
def signalled_run(work: Path, args: list[str], hook: str, sig: signal.Signals, *, on_call: int = 1) -> subprocess.CompletedProcess[str]:
    """Run ``trtq ARGS`` in a subprocess whose function ``hook`` (module:name) sends ``sig`` to the process
    on its ``on_call``-th call, then carries on as if nothing happened (the signal arrives mid-step)."""
    module, name = hook.split(":")
    script = textwrap.dedent(f"""
        import importlib, os, signal, sys
        mod = importlib.import_module({module!r})
        real = getattr(mod, {name!r})
        calls = []
        def hooked(*args, **kwargs):
            calls.append(1)
            if len(calls) == {on_call}:
                os.kill(os.getpid(), {int(sig)})
            return real(*args, **kwargs)
        setattr(mod, {name!r}, hooked)
        from trtq.cli import main
        main({args!r}, prog_name="trtq")
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300)


QUANTIZE = ["quantize", "m.onnx", "--calib", "imgs", "--ref-images", "2", "-o", "out/q.onnx"]
CALIBRATE = ["calibrate", "m.onnx", "--calib", "imgs", "-o", "out/c.cache"]


@pytest.mark.parametrize(("args", "hook", "sig", "code", "word", "on_call"), [
    # the Q/DQ ONNX is written, the report not yet
    (QUANTIZE, "trtq.quantize:report_markdown", signal.SIGTERM, 143, "terminated (SIGTERM)", 1),
    # model and report written; the reference step is running (Ctrl-C)
    (QUANTIZE, "trtq.reference:save_outputs", signal.SIGINT, 130, "interrupted", 1),
    (QUANTIZE, "trtq.reference:save_outputs", signal.SIGTERM, 143, "terminated (SIGTERM)", 1),
    # the cache is written, its sidecar not yet
    (CALIBRATE, "calibrators.table:_write_synced", signal.SIGTERM, 143, "terminated (SIGTERM)", 2),
])
def test_a_stopped_run_leaves_no_file_and_says_so(work: Path, args: list[str], hook: str, sig: signal.Signals,
                                                   code: int, word: str, on_call: int) -> None:
    (work / "out").mkdir()
    before = listing(work)
    proc = signalled_run(work, args, hook, sig, on_call=on_call)
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("trtq: error:")]
    assert len(errors) == 1 and word in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert listing(work) == before  # no model without its report, no hidden temp file


def test_an_unstopped_run_writes_the_whole_set(work: Path) -> None:
    proc = signalled_run(work, QUANTIZE, "trtq.quantize:report_markdown", signal.SIGTERM, on_call=99)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (work / "out").iterdir()) == [
        "q.onnx", "q.ref-inputs.json", "q.ref-outputs.json", "q.ref.json", "q.report.json", "q.report.md"]


@pytest.mark.parametrize(("args", "want"), [
    (["export", "m.pt", "-o", "m.pt"], "must be a .onnx file"),
    (["export", "m.pt", "-o", "m.engine"], "must be a .onnx file"),
    (["build", "m.onnx", "--fp16", "-o", "m.onnx"], "must be a .engine file"),
    (["build", "m.onnx", "--fp16", "-o", "e.engine", "--timing-cache", "e.engine.json"], "would overwrite the input"),
    (["qat", "m.pt", "--distill", "--calib", "imgs", "-o", "m.pt"], "must be a .onnx file"),
    (["qat", "m.pt", "--distill", "--calib", "q.float.onnx", "-o", "q.onnx"], "would overwrite the input"),
])
def test_every_output_option_is_checked_before_any_work(work: Path, args: list[str], want: str) -> None:
    (work / "m.pt").write_bytes(b"not a checkpoint: never read")
    for name in ("e.engine.json", "q.float.onnx"):
        (work / name).write_text("{}")
    before = {p: p.read_bytes() for p in work.iterdir() if p.is_file()}
    code, text = run(work, *args)
    assert code == 2 and want in text, text
    assert {p: p.read_bytes() for p in work.iterdir() if p.is_file()} == before


def test_build_into_a_folder_names_the_engine_inside_it(work: Path) -> None:
    code, text = run(work, "build", "m.onnx", "--fp16", "-o", "eng/")
    assert code == 3, text  # no TensorRT here: the finishing command carries the engine path
    assert "--output eng/m.fp16.engine" in text and (work / "eng").is_dir()
