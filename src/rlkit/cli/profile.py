"""``rlkit profile``: the same run as ``rlkit train``, with a profiler on for a window of steps."""

from __future__ import annotations

import os
import subprocess
import sys

import typer

from rlkit.cli._checks import compose
from rlkit.cli._options import CONFIG, OVERRIDES, PROFILE
from rlkit.errors import UserError
from rlkit.profiling.launch import nsys_command, nsys_executable, preflight
from rlkit.profiling.profiler import parse_steps

EPILOG = (
    "Examples: [bold]rlkit profile --torch --steps 2-3 train grpo[/], "
    "[bold]rlkit profile --nsight train grpo --profile h100x8[/]; files land in RUN/profile/"
)


def profile(
    ctx: typer.Context,
    command: str = typer.Argument(..., help="What to profile: train."),
    recipe: str = typer.Argument(..., help="Recipe name (see `rlkit recipes`) or a recipe YAML path."),
    overrides: list[str] = OVERRIDES,
    nsight: bool = typer.Option(
        False, "--nsight", help="Nsight Systems: the whole job under nsys, NVTX ranges."
    ),
    torch_trace: bool = typer.Option(False, "--torch", help="torch.profiler: a Chrome trace per worker."),
    npu: bool = typer.Option(
        False, "--npu", help="torch_npu's profiler (Ascend): a trace folder per worker."
    ),
    memory: bool = typer.Option(False, "--memory", help="Device memory snapshots per worker (memory_viz)."),
    steps: str = typer.Option(None, "--steps", help="First-last RL step to profile, e.g. 2-3 (default 2-3)."),
    hw_profile: str = PROFILE,
    config_file: str = CONFIG,
) -> None:
    """Run a recipe like `rlkit train`, with a profiler on in every worker for the chosen steps."""
    chosen = [
        k for k, on in (("nsight", nsight), ("torch", torch_trace), ("npu", npu), ("memory", memory)) if on
    ]
    if len(chosen) != 1:
        raise UserError(
            "choose exactly one of --nsight, --torch, --npu, --memory",
            hint="e.g. rlkit profile --torch train grpo",
        )
    kind = chosen[0]
    if command != "train":
        raise UserError(
            f"rlkit profile runs `train`, not {command!r}", hint=f"e.g. rlkit profile --{kind} train grpo"
        )
    window = parse_steps(steps) if steps else None
    nsys = nsys_executable() if kind == "nsight" else ""  # the missing tool is the first thing said
    extra = [f"trainer.profile={kind}"] + (
        [f"trainer.profile_steps=[{window[0]},{window[1]}]"] if window else []
    )
    all_overrides = [*(overrides or []), *extra]
    cfg = compose(
        recipe, profile=hw_profile, config_file=config_file, overrides=all_overrides, command="train"
    )
    preflight(kind, joining_cluster=bool(cfg.hardware.ray_address or os.environ.get("RAY_ADDRESS")))
    if kind == "nsight":
        from rlkit.ckpt.run_folder import resolve_run_folder

        # the child trains in the folder chosen here, so the report can go next to its run
        folder = resolve_run_folder(cfg.trainer.out_dir, cfg.trainer.resume, cfg.recipe)
        out = folder.path / "profile"
        out.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "rlkit", *(["--debug"] if (ctx.obj or {}).get("debug") else [])]
        argv += ["train", recipe, *all_overrides]
        argv += [f"trainer.out_dir={folder.path}", f"trainer.resume={folder.resume}"]
        argv += [
            *(["--profile", hw_profile] if hw_profile else []),
            *(["--config", config_file] if config_file else []),
        ]
        code = subprocess.call(nsys_command(nsys, out / "nsight", argv))
        if code != 0:
            raise typer.Exit(code)
    else:
        from rlkit.trainer import run_rl

        out = run_rl(cfg) / "profile"
    typer.echo(f"profile of {kind} written under {out}/ (docs/profiling.md says how to open it)")
