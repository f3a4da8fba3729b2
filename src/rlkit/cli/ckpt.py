"""``rlkit ckpt``: list a run's checkpoints, merge one into a Hugging Face folder (the job: rlkit.ckpt)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="ckpt",
    help="Checkpoints of a run: list them, merge one into a Hugging Face model folder.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

MERGE_EPILOG = (
    "Example: [bold]rlkit ckpt merge runs/grpo/latest/checkpoints/step_60 --out grpo-hf --verify[/] "
    "(then: rlkit generate grpo-hf ..., or AutoModelForCausalLM.from_pretrained('grpo-hf'))"
)
LS_EPILOG = "Example: [bold]rlkit ckpt ls runs/grpo/latest[/]"
_STATUS_STYLE = {"complete": "green", "damaged": "bold red", "interrupted": "yellow"}


@app.command("merge", epilog=MERGE_EPILOG)
def merge(
    ckpt_dir: Path = typer.Argument(..., help="A checkpoint folder: RUN/checkpoints/step_N."),
    out: Path = typer.Option(..., "--out", help="Hugging Face folder to write: new or empty (see --force)."),
    verify: bool = typer.Option(False, "--verify", help="Reload with transformers and compare logits."),
    role: str = typer.Option(None, "--role", help="actor or critic (default: the actor)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (as stored, fp32), bfloat16, float16, float32."),
    adapter: bool = typer.Option(
        False, "--adapter", help="LoRA runs: write the PEFT adapter, not merged weights."
    ),
    force: bool = typer.Option(
        False, "--force", help="Write into a non-empty --out, replacing only the files merge writes."
    ),
) -> None:
    """Merge a sharded checkpoint into a Hugging Face folder (safetensors, config, tokenizer)."""
    from rlkit.ckpt import merge_checkpoint

    console = Console(stderr=True)
    with console.status(f"merging {ckpt_dir}"):
        result = merge_checkpoint(
            ckpt_dir, out, role=role, dtype=dtype, verify=verify, adapter=adapter, force=force
        )
    what = "PEFT adapter" if result.adapter else "Hugging Face model"
    line = f"wrote the {result.role}'s {what} ({result.num_tensors} tensors) to [bold]{result.out}[/]"
    if result.max_abs_diff is not None:
        line += f"; verified: transformers logits match (max |diff| {result.max_abs_diff:.2g})"
    console.print(line, highlight=False)


@app.command("ls", epilog=LS_EPILOG)
def ls(run_dir: Path = typer.Argument(..., help="A run directory (trainer.out_dir).")) -> None:
    """List a run's checkpoints: step, status, size, time and the metrics at that step."""
    from rlkit.ckpt.report import checkpoint_rows

    run, rows, columns = checkpoint_rows(run_dir)
    table = Table(title=f"checkpoints of {run}", title_justify="left")
    for name in ("step", "status", "size", "saved", *(label for _, label in columns)):
        table.add_column(name, justify="right" if name not in ("status", "saved") else "left")
    for row in rows:
        info = row.info
        status = f"[{_STATUS_STYLE[info.status]}]{info.status}[/]" + (" (latest)" if row.latest else "")
        if info.problem and info.status == "damaged":
            status += f"\n[dim]{info.problem}[/]"
        values = [_fmt(row.metrics.get(key)) for key, _ in columns]
        saved = time.strftime("%m-%d %H:%M", time.localtime(info.created))
        table.add_row(str(info.step), status, _size(info.size_bytes), saved, *values)
    Console(soft_wrap=True).print(table if rows else f"{run}: no checkpoints yet")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else str(value))
