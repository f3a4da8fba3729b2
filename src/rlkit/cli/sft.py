"""``rlkit sft``: supervised fine-tuning (the embedded default: the tiny model on synthetic arith chats)."""

from __future__ import annotations

import typer

from rlkit.cli._checks import compose, dry_run
from rlkit.cli._options import CONFIG, NODES, OVERRIDES, PROFILE, with_nodes

EPILOG = (
    "Examples: [bold]rlkit sft[/] (the embedded default: tiny model, synthetic arith chats), "
    "[bold]rlkit sft data.train_files=\\[chat.parquet] model.path=./Qwen2.5-0.5B-Instruct model.lora_rank=16[/]"
)


def sft(
    recipe: str = typer.Argument("sft", help="SFT recipe name (see `rlkit recipes`) or a recipe YAML path."),
    overrides: list[str] = OVERRIDES,
    profile: str = PROFILE,
    config_file: str = CONFIG,
    nodes: int = NODES,
    dry: bool = typer.Option(
        False, "--dry-run", help="Run every check that needs no Ray and no weights, print them, and stop."
    ),
) -> None:
    """Fine-tune a model on conversations (loss on the assistant's tokens); exports a Hugging Face folder."""
    overrides = list(overrides or [])
    if "=" in recipe:  # `rlkit sft KEY=VALUE ...`: the optional RECIPE was left out
        recipe, overrides = "sft", [recipe, *overrides]
    overrides = with_nodes(overrides, nodes)
    cfg = compose(recipe, profile=profile, config_file=config_file, overrides=overrides, command="sft")
    if dry:
        dry_run(cfg, "sft")
        return
    from rlkit.config.compose import to_dataclass
    from rlkit.trainer.preflight import preflight
    from rlkit.trainer.sft import run_sft

    preflight(to_dataclass(cfg), "sft")

    result = run_sft(cfg)
    if result.num_truncated:
        typer.echo(f"{result.num_truncated} conversations were truncated to sft.max_length")
    typer.echo(
        f"run finished: {result.run_dir} (metrics.jsonl, checkpoints/); plot it with `rlkit plot {result.run_dir}`"
    )
    typer.echo(f"model: {result.hf_dir}")
    if result.adapter_dir is not None:
        typer.echo(f"LoRA adapter (PEFT): {result.adapter_dir}")
    typer.echo(f"start RL from it: rlkit train grpo model.path={result.hf_dir}")
