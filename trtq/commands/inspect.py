from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(name="inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@click.option("--no-layers", is_flag=True, help="Engines: skip the per-layer precisions (TensorRT engine inspector).")
def command(path: Path, as_json: bool, no_layers: bool) -> None:
    """Show what PATH is and how it was made: an .engine (its record, and per-layer precisions when
    TensorRT is installed), a calibration cache (+ its record) or an .onnx (inputs, outputs, metadata, Q/DQ)."""
    from trtq.trt.inspect import inspect_path

    result = inspect_path(path, layers=not no_layers)
    if as_json:
        click.echo(json.dumps({"kind": result.kind, "path": str(result.path), **result.data}, indent=2, default=str))
    else:
        click.echo(result.text())
