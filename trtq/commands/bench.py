"""`trtq bench`: benchmark engines and ONNX models side by side."""

from __future__ import annotations

from pathlib import Path

import click

from trtq.commands._options import device_option, path_option
from trtq.errors import TrtqError


def _parse_batches(values: tuple[str, ...]) -> list[int] | None:
    out: list[int] = []
    for value in values:
        for part in value.replace(" ", ",").split(","):
            if not part:
                continue
            try:
                n = int(part)
            except ValueError:
                raise TrtqError(f"--batch takes whole numbers (e.g. --batch 1,8,16), got {part!r}") from None
            if n < 1:
                raise TrtqError(f"--batch sizes must be at least 1, got {n}")
            out.append(n)
    return out or None


@click.command(name="bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--batch",
    "batch",
    multiple=True,
    metavar="N[,N...]",
    help="Batch sizes to sweep (repeat or comma-separate). Default: each model's own batch.",
)
@click.option(
    "--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed iterations first."
)
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Timed iterations per row.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds per row (default 3 when --iterations is not given).",
)
@click.option(
    "--cuda-graph", is_flag=True, help="Replay the engine as a CUDA graph (TensorRT; needs cuda-python)."
)
@click.option("--no-transfers", is_flag=True, help="Time GPU compute only, without host<->device copies.")
@device_option()
@click.option(
    "--provider",
    "providers",
    multiple=True,
    help="ONNX Runtime execution provider(s) (default CPUExecutionProvider).",
)
@path_option("--json", "json_path", "Write the JSON record here.")
@path_option("--markdown", "markdown_path", "Write the Markdown table here.")
@path_option("--plot", "plot_path", "Write a PNG plot here.")
@click.option(
    "--pipeline",
    "pipeline_source",
    metavar="SOURCE",
    default=None,
    help="Video: end-to-end FPS of trtq's pipeline on SOURCE, per-stage latency, the model alone and "
    "ultralytics' stream predict beside it (interleaved).",
)
@click.option("--save", is_flag=True, help="With --pipeline: also time draw+encode to MP4.")
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True, help="With --pipeline.")
@click.option("--lanes", type=click.IntRange(min=1), default=None,
              help="With --pipeline: inferences side by side (default: as `trtq predict` runs the source).")
def command(
    models: tuple[Path, ...],
    batch: tuple[str, ...],
    warmup: int,
    iterations: int | None,
    duration: float | None,
    cuda_graph: bool,
    no_transfers: bool,
    device: int,
    providers: tuple[str, ...],
    json_path: Path | None,
    markdown_path: Path | None,
    plot_path: Path | None,
    pipeline_source: str | None,
    save: bool,
    rounds: int,
    lanes: int | None,
) -> None:
    """Benchmark MODELS (.engine/.plan with CUDA events, .onnx on ONNX Runtime) and compare them.

    \b
    Examples:
      trtq bench yolov8n.onnx yolov8n.int8.onnx --duration 5
      trtq bench fp16.engine int8.engine --batch 1,8 --markdown bench.md --plot bench.png
      trtq bench --pipeline video.mp4 yolov8n.onnx yolov8n.int8.onnx --save
    """
    if pipeline_source is not None:
        _pipeline(
            pipeline_source,
            models,
            rounds=rounds,
            save=save,
            lanes=lanes,
            json_path=json_path,
            markdown_path=markdown_path,
        )
        return
    from trtq.bench.harness import BenchRow, bench
    from trtq.bench.report import markdown

    def progress(row: BenchRow) -> None:
        if row.ok and row.latency is not None:
            click.echo(
                f"{row.model} b{row.batch}: median {row.latency.median:.3f} ms ({row.backend})", err=True
            )
        else:
            click.echo(f"{row.model} b{row.batch}: skipped ({row.reason})", err=True)

    result = bench(
        list(models),
        batches=_parse_batches(batch),
        warmup=warmup,
        iterations=iterations,
        duration=duration,
        cuda_graph=cuda_graph,
        transfers=not no_transfers,
        device=device,
        providers=list(providers) or None,
        json_path=json_path,
        markdown_path=markdown_path,
        plot_path=plot_path,
        on_row=progress,
    )
    click.echo(markdown(result))
    for path in (json_path, markdown_path, plot_path):
        if path is not None:
            click.echo(f"wrote {path}", err=True)


def _pipeline(
    source: str,
    models: tuple[Path, ...],
    *,
    rounds: int,
    save: bool,
    lanes: int | None,
    json_path: Path | None,
    markdown_path: Path | None,
) -> None:
    from trtq.bench.pipeline import bench_pipeline, markdown
    from trtq.fileio import write_json, write_text

    result = bench_pipeline(
        source,
        list(models),
        rounds=rounds,
        save=save,
        lanes=lanes,
        on_step=lambda msg: click.echo(msg, err=True),
    )
    text = markdown(result)
    click.echo(text)
    if json_path is not None:
        write_json(json_path, result.to_dict())
    if markdown_path is not None:
        write_text(markdown_path, text)
