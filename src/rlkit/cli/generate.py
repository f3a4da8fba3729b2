"""``rlkit generate``: batch generation with a rollout engine (``--engine``) (the job: rlkit.rollout.offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

EPILOG = (
    "Example: [bold]rlkit generate ./Qwen2.5-0.5B-Instruct --prompts data/test.parquet --out gen.jsonl "
    "--n 4 --temperature 0.7[/]"
)


def generate(
    model: str = typer.Argument(
        ...,
        help="A Hugging Face model folder, a Hub id ORG/NAME (cached), a checkpoint folder, or builtin:tiny-arith.",
    ),
    prompts: Path = typer.Option(
        ..., "--prompts", help="jsonl (prompt or messages per line) or verl parquet."
    ),
    out: Path = typer.Option(..., "--out", help="Output jsonl: one row per prompt, in input order."),
    n: int = typer.Option(1, "--n", help="Completions per prompt."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature; 0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling threshold (1 = off)."),
    top_k: int = typer.Option(-1, "--top-k", help="Top-k sampling (-1 = off)."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Most tokens per completion."),
    seed: int | None = typer.Option(None, "--seed", help="Seed: the same seed gives the same completions."),
    no_chat_template: bool = typer.Option(
        False,
        "--no-chat-template",
        help="Use the raw text even when the tokenizer has a chat template (without one, raw is the default).",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(256, "--batch-size", help="Prompts handed to the engine at a time."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    engine: str = typer.Option(
        "auto",
        "--engine",
        help="Rollout engine: auto (native for Llama/Qwen models, else hf), native, hf, vllm "
        "(needs the vllm package) or server (an OpenAI-compatible vLLM server; see --server-url).",
    ),
    server_url: str | None = typer.Option(
        None,
        "--server-url",
        help="With --engine server: the server (http://host:port); without, rlkit starts one and stops it.",
    ),
    agent: str | None = typer.Option(
        None,
        "--agent",
        help="Run an agent loop (tool, single_turn, or module:Class) and write whole trajectories "
        "(messages, tool calls, ids, loss mask); --max-tokens is each trajectory's budget.",
    ),
    tools: str | None = typer.Option(
        None, "--tools", help="With --agent: tools, comma-separated (built-in names or a verl tools YAML)."
    ),
    environment: str | None = typer.Option(
        None,
        "--environment",
        help="With --agent: a TRL-style environment class (module:Class or file.py:Class).",
    ),
    interactions: str | None = typer.Option(
        None, "--interactions", help="With --agent: a verl-layout interaction YAML file."
    ),
    max_turns: int = typer.Option(5, "--max-turns", help="With --agent: most model turns per trajectory."),
) -> None:
    """Generate completions for a file of prompts and write them as jsonl."""
    from rlkit.data.hub import resolve_model_path
    from rlkit.outputs import check_new_file
    from rlkit.rollout.offline import run_generate, sampling_params

    check_new_file(out, force=force, inputs=[prompts])  # before any model loads
    model = resolve_model_path(model, key="MODEL")  # a Hub id -> its folder in the Hugging Face cache

    params = sampling_params(
        n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed
    )
    console = Console(stderr=True)
    if agent is not None:
        multi_turn = {
            "agent": agent,
            "tools": [t for t in (tools or "").split(",") if t.strip()],
            "environment": environment,
            "interaction_config_path": interactions,
            "max_turns": max_turns,
        }
        _generate_trajectories(
            model, prompts, out, params, multi_turn, console,
            device=device, batch_size=batch_size, engine=engine, server_url=server_url,
        )  # fmt: skip
        return
    summary = run_generate(
        model,
        prompts,
        out,
        params=params,
        chat_template=False if no_chat_template else None,
        device=device,
        batch_size=batch_size,
        console=console,
        engine=engine,
        server_url=server_url,
    )
    console.print(
        f"wrote {summary.prompts} rows ({summary.completions} completions, {summary.tokens} tokens, "
        f"{summary.tokens_per_s:,.0f} tok/s) to [bold]{summary.out}[/]"
    )


def _generate_trajectories(
    model: str,
    prompts: Path,
    out: Path,
    params: Any,
    multi_turn: dict[str, Any],
    console: Console,
    **engine_args: Any,
) -> None:
    """``--agent``: run the agent loop on every prompt and write whole trajectories."""
    from rlkit.agents.offline import run_agent_generate

    summary, agent_metrics = run_agent_generate(
        model, prompts, out, params=params, multi_turn=multi_turn, **engine_args
    )
    console.print(", ".join(f"{k} {v:.3g}" for k, v in agent_metrics.items()))
    console.print(
        f"wrote {summary.prompts} rows ({summary.completions} trajectories) to [bold]{summary.out}[/]"
    )
