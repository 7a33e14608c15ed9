from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command(name="verify")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--inputs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference inputs (Polygraphy feed-dict JSON) [default: the ones recorded for ARTIFACT].")
@click.option("--outputs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference outputs (Polygraphy RunResults JSON) [default: the ones recorded for ARTIFACT].")
@click.option("--tolerance", "tolerances", multiple=True, metavar="KEY=VALUE",
              help="Override a pass threshold: cosine, snr_db, recall, precision, class_agreement, oks, mask_iou, "
                   "angle_deg, conf, match_iou, score_band (repeatable).")
@click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device for engines.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the verdict and metrics as JSON.")
def command(artifact: Path, inputs: Path | None, outputs: Path | None, tolerances: tuple[str, ...], device: int,
            json_out: Path | None) -> None:
    """Check ARTIFACT (.engine on TensorRT, .onnx / Q/DQ .onnx on ONNX Runtime) against its reference outputs.

    \b
    Examples:
      trtq verify engines/yolov8n.int8.engine          # the references recorded by `trtq build`
      trtq verify engines/yolov8n.int8.onnx
      trtq verify model.onnx --inputs a.ref-inputs.json --outputs a.ref-outputs.json --tolerance snr_db=25

    Per output: cosine, SQNR and max |error|; for YOLO head outputs also detection agreement (precision, recall,
    mean IoU, detections matched within their class; class agreement) and the task's own: keypoint OKS, mask
    IoU, angle error. Exit code 0 within tolerance, 1 outside or when ARTIFACT cannot be compared with the
    references (another model's, a mixed set, an output missing, another shape).
    """
    from trtq.agreement import parse_tolerance
    from trtq.fileio import write_json
    from trtq.verify import verify

    result = verify(artifact, inputs=inputs, outputs=outputs, tolerance=parse_tolerance(tolerances), device=device)
    click.echo(result.table())
    if json_out is not None:
        write_json(json_out, {"artifact": str(artifact), **result.to_dict()})
    if result.passed:
        click.echo(f"PASSED: {artifact} matches its reference")
    else:
        why = f"cannot be compared with its reference: {result.error}" if result.error else "is outside the tolerance"
        click.secho(f"FAILED: {artifact} {why}", fg="red", err=True)
        sys.exit(1)
