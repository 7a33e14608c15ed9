"""The ``trtq`` command line: a thin adapter over library functions.

Each sub-command lives in ``trtq/commands/<name>.py`` as a click command named ``command`` and is
imported only when it runs (or when its help is shown), so ``trtq --help`` stays fast and works
without TensorRT, pycuda, torch or ultralytics installed.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

from trtq import __version__
from trtq.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Terminated,
    TrtqError,
    terminate_as_interrupt,
)

# name -> (module, one-line help shown by `trtq --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("trtq.commands.export", "Export an Ultralytics YOLO model (.pt: detect, segment, pose, obb) to ONNX."),
    "calibrate": ("trtq.commands.calibrate", "Compute INT8 ranges on the CPU; write a TensorRT calibration cache."),
    "quantize": ("trtq.commands.quantize", "Write an explicit Q/DQ INT8 ONNX (runs on ONNX Runtime and TensorRT)."),
    "qat": ("trtq.commands.qat", "Quantization-aware fine-tuning of a .pt; writes a Q/DQ INT8 ONNX."),
    "eval": ("trtq.commands.evaluate", "Measure mAP50-95 / mAP50 of a .pt, ONNX, Q/DQ ONNX or engine."),
    "compare": ("trtq.commands.compare", "Fidelity of a quantized model against FP32 on unlabelled images."),
    "sensitivity": ("trtq.commands.sensitivity", "Rank layers by the output error (or mAP drop) each costs in INT8."),
    "verify": ("trtq.commands.verify", "Check an engine or ONNX against its reference outputs (exit 1 if outside tolerance)."),
    "build": ("trtq.commands.build", "Build a TensorRT engine (FP32/FP16/INT8, implicit or explicit)."),
    "inspect": ("trtq.commands.inspect", "Show what an engine, cache or ONNX is and how it was made."),
    "bench": ("trtq.commands.bench", "Benchmark engines and ONNX models side by side (--pipeline: video end to end)."),
    "predict": ("trtq.commands.predict", "Run detection on images, video files, cameras or streams; draw or write JSON."),
    "deploy": ("trtq.commands.deploy", "Write a DeepStream bundle or a Triton model repository (no TensorRT needed)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(entry[0])
        cmd: click.Command = module.command
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with terminate_as_interrupt():
                return super().invoke(ctx)
        except TrtqError as exc:
            _fail(str(exc), exc.exit_code)
        except Terminated:
            _fail(f"terminated (SIGTERM); {_KEPT}", EXIT_TERMINATED)
        except KeyboardInterrupt:
            _fail(f"interrupted; {_KEPT}", EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug in trtq: one line, and the traceback on request
            if os.environ.get("TRTQ_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (set TRTQ_DEBUG=1 for the traceback)", EXIT_ERROR)


# every output is written atomically, and the files of one result as a set (trtq.fileio.output_set)
_KEPT = "no partially written file was left (the files of a step that finished before it are kept)"


def _fail(message: str, code: int) -> None:
    first, *rest = str(message).splitlines() or [""]
    click.secho(f"trtq: error: {first}", fg="red", err=True)
    for line in rest:  # follow-up lines only when the message itself has them (e.g. how to finish)
        click.echo(f"  {line}", err=True)
    sys.exit(code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="trtq")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def main(verbose: int, quiet: bool) -> None:
    """trtq: accurate TensorRT INT8/FP16 engines for Ultralytics YOLO (v8, 11, 26; detect, segment, pose, obb).

    \b
    Typical use:
      trtq build yolov8n.pt --int8 --calib ./images     # export, calibrate, quantize, build
      trtq eval --compare yolov8n.onnx yolov8n.int8.onnx --data coco.yaml
      trtq bench engines/*.engine
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    for noisy in ("ultralytics", "matplotlib", "PIL", "onnxslim"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


if __name__ == "__main__":  # pragma: no cover
    main()
