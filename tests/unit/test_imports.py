"""Every module imports, and every `trtq <cmd> --help` works, without TensorRT, pycuda or cuda-python;
torch and ultralytics are not imported by importing trtq (they load on first use)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib, importlib.abc, pkgutil, sys

BLOCKED = ("tensorrt", "tensorrt_bindings", "pycuda", "cuda")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked for this test")
        return None

sys.meta_path.insert(0, Block())
failed = []
modules = []
for pkg_name in ("trtq", "calibrators"):
    pkg = importlib.import_module(pkg_name)
    for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
        if info.name.endswith("__main__"):
            continue
        modules.append(info.name)
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
heavy = sorted(m for m in ("torch", "ultralytics", "tensorrt", "pycuda", "cuda") if m in sys.modules)
print("MODULES", len(modules))
print("FAILED", failed)
print("HEAVY", heavy)

from click.testing import CliRunner
from trtq.cli import COMMANDS, main
bad = []
for name in COMMANDS:
    res = CliRunner().invoke(main, [name, "--help"])
    if res.exit_code != 0 or "Usage:" not in res.output:
        bad.append(f"{name}: exit {res.exit_code}: {res.output[-200:]!r} {res.exception!r}")
res = CliRunner().invoke(main, ["--help"])
if res.exit_code != 0:
    bad.append("trtq --help")
print("HELP", bad)
"""


def _run() -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "YOLO_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        out[key] = value
    return out


def test_all_modules_import_and_help_works_without_gpu_packages() -> None:
    out = _run()
    assert int(out["MODULES"]) >= 10
    assert out["FAILED"] == "[]", out["FAILED"]
    assert out["HEAVY"] == "[]", f"imported at module import: {out['HEAVY']}"
    assert out["HELP"] == "[]", out["HELP"]


def test_tensorrt_is_absent_or_real_never_the_type_stubs() -> None:
    """The TensorRT type stubs live where only the type checker looks (pyrightconfig's stubPath): in the
    interpreter's path they make `import tensorrt` succeed as an empty package, which fools Polygraphy
    (`inspect model --display-as=trt`) and trtq's own TensorRT detection."""
    code = (
        "import importlib.util, json\n"
        "spec = importlib.util.find_spec('tensorrt')\n"
        "real = None\n"
        "if spec is not None:\n"
        "    import tensorrt\n"
        "    real = hasattr(tensorrt, 'Builder')\n"
        "print(json.dumps({'found': spec is not None, 'real': real}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not seen["found"] or seen["real"], "`import tensorrt` finds a package without TensorRT's API (type stubs?)"
    stubs = REPO / ".typings" / "tensorrt"
    config = json.loads((REPO / "pyrightconfig.json").read_text())
    assert config.get("stubPath") == ".typings"
    if stubs.exists():  # after `make install`: the stubs are where the type checker looks, and only there
        assert (stubs / "__init__.pyi").is_file()
