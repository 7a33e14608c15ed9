from __future__ import annotations

from typing import Any

import click

from trtq.commands._options import output_option


class _ImgszCommand(click.Command):
    """Accepts ``--imgsz H W`` (as well as ``--imgsz S`` and ``--imgsz H --imgsz W``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(args):
            out.append(args[i])
            if args[i] == "--imgsz" and i + 2 < len(args) and args[i + 1].isdigit() and args[i + 2].isdigit():
                out += [args[i + 1], "--imgsz", args[i + 2]]
                i += 3
                continue
            i += 1
        return super().parse_args(ctx, out)


@click.command(name="export", cls=_ImgszCommand)
@click.argument("model")
@click.option("--imgsz", type=int, multiple=True, metavar="H [W]",
              help="Input size: --imgsz 640 (square) or --imgsz 480 640 (height, width).  [default: 640]")
@click.option("--opset", default=17, show_default=True, type=int,
              help="ONNX opset (11 or newer; Q/DQ quantization upgrades 11-12 to 13).")
@click.option("--batch", default=1, show_default=True, type=int, help="Static batch size.")
@click.option("--dynamic", is_flag=True, help="Dynamic batch (and image size) axes.")
@click.option("--end2end", is_flag=True,
              help="YOLO26: export the end-to-end one-to-one head ([N, 300, 6+], no NMS) instead of the default "
                   "one-to-many head ([N, 4+classes, anchors], decoded with NMS).")
@output_option("Output path, .onnx (default <model>.onnx beside the model; a folder: that name inside it).")
def command(model: str, imgsz: tuple[int, ...], opset: int, batch: int, dynamic: bool, end2end: bool,
            output: str | None) -> None:
    """Export an Ultralytics YOLO MODEL (.pt path or model name; detect, segment, pose or obb) to ONNX,
    simplified, with metadata."""
    from trtq.errors import TrtqError
    from trtq.export import export_onnx
    from trtq.fileio import default_output, output_path
    from trtq.modelinfo import check_model, read_model_info

    if len(imgsz) > 2:
        raise TrtqError(f"--imgsz takes one size or H W, got {len(imgsz)} values")
    size: Any = 640 if not imgsz else imgsz[0] if len(imgsz) == 1 else (imgsz[0], imgsz[1])
    dest = output_path(output, default_output(model, ".onnx"), suffixes=(".onnx",), inputs=(model,)) if output else None
    out = export_onnx(model, imgsz=size, opset=opset, batch=batch, dynamic=dynamic, output=dest, end2end=end2end)
    info = read_model_info(out, with_hash=False)
    layout = check_model(info)
    shape = "x".join("?" if d is None else str(d) for d in info.input.shape)
    what = layout.describe() if layout is not None else f"{len(info.names)} classes"
    click.echo(f"exported {model} -> {out} (input {info.input.name} {shape}, {what}, opset {opset})")
