from __future__ import annotations

from pathlib import Path

import click


@click.command(name="export")
@click.argument("model")
@click.option("--imgsz", default=640, show_default=True, type=int, help="Input image size (square).")
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset (13 or newer).")
@click.option("--batch", default=1, show_default=True, type=int, help="Static batch size.")
@click.option("--dynamic", is_flag=True, help="Dynamic batch (and image size) axes.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Output .onnx path.")
def command(model: str, imgsz: int, opset: int, batch: int, dynamic: bool, output: Path | None) -> None:
    """Export an Ultralytics YOLOv8 MODEL (.pt path or model name) to ONNX, simplified, with metadata."""
    from trtq.export import export_onnx
    from trtq.modelinfo import read_model_info

    out = export_onnx(model, imgsz=imgsz, opset=opset, batch=batch, dynamic=dynamic, output=output)
    info = read_model_info(out, with_hash=False)
    shape = "x".join("?" if d is None else str(d) for d in info.input.shape)
    click.echo(f"exported {model} -> {out} (input {info.input.name} {shape}, {len(info.names)} classes, opset {opset})")
