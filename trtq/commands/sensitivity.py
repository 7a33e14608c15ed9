from __future__ import annotations

from pathlib import Path

import click

from calibrators.ranges import DEFAULT_ALGO
from trtq.amax import QUANTIZE_ALGOS


@click.command(name="sensitivity")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", "source", required=True, help="Calibration images (ranges, and the fidelity metric's images).")
@click.option("--data", default=None, help="Labelled data, needed for --metric map.")
@click.option("--metric", type=click.Choice(["fidelity", "map"]), default="fidelity", show_default=True,
              help="Cost of a layer quantized alone: output error on --calib images, or mAP drop on --data (slow).")
@click.option("--algo", type=click.Choice(QUANTIZE_ALGOS), default=DEFAULT_ALGO, show_default=True, help="Range algorithm.")
@click.option("--num-images", type=int, default=8, show_default=True, help="Images for the fidelity metric.")
@click.option("--top", type=int, default=20, show_default=True, help="Rows to print (all rows go to the files).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Path prefix for OUT.txt, OUT.json and the bar chart OUT.png (default <model>.sensitivity).")
def command(model: Path, source: str, data: str | None, metric: str, algo: str, num_images: int, top: int, output: Path | None) -> None:
    """Rank MODEL's quantized layers by what each costs when it alone is INT8; write text, JSON and a PNG chart."""
    from trtq.fileio import check_writable
    from trtq.sensitivity import analyse

    prefix = output if output is not None else model.with_name(f"{model.stem}.sensitivity")
    check_writable(prefix.parent)
    result = analyse(model, source, algo=algo, data=data, metric=metric, num_images=num_images, output=prefix, progress=True)
    click.echo(result.table(top))
    click.echo(f"wrote {result.text_path}, {result.json_path} and {result.png_path}")
