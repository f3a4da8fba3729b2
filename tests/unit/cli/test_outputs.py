"""No command overwrites a user's file or folder unasked: generate, plot, cp, download (merge, data: their tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlkit.cli.app import app

runner = CliRunner()


def one_line_error(args: list[str], *needles: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_generate_out(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "1+2="}\n')
    mine = tmp_path / "mine.jsonl"
    mine.write_text("keep\n")
    gen = ["generate", "builtin:tiny", "--prompts", str(prompts), "--max-tokens", "2", "--device", "cpu"]
    one_line_error([*gen, "--out", str(mine)], "already exists", "--force")
    one_line_error([*gen, "--out", str(prompts), "--force"], "is also this command's input")
    one_line_error([*gen, "--out", str(tmp_path)], "is a folder")
    assert mine.read_text() == "keep\n"
    result = runner.invoke(app, [*gen, "--out", str(mine), "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads(mine.read_text().splitlines()[0])["prompt"] == "1+2="


def test_plot_out(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "reward/mean": 0.5}\n{"step": 2, "reward/mean": 0.7}\n'
    )
    one_line_error(["plot", str(tmp_path), "--out", str(tmp_path / "metrics.jsonl")], "must be a .png")
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my picture")
    one_line_error(["plot", str(tmp_path), "--out", str(mine)], "already exists")
    assert mine.read_bytes() == b"my picture"
    result = runner.invoke(app, ["plot", str(tmp_path), "--out", str(mine), "--force"])
    assert result.exit_code == 0 and mine.read_bytes() != b"my picture", result.output
    for _ in range(2):  # the default RUN/metrics.png is rlkit's own output: replaced without --force
        result = runner.invoke(app, ["plot", str(tmp_path)])
        assert result.exit_code == 0 and (tmp_path / "metrics.png").is_file(), result.output


def test_cp_dest_folder(tmp_path: Path) -> None:
    one_line_error(["cp", "grpo", str(tmp_path), "--force"], "is a folder")


def test_download_into_a_users_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the network; the check comes first anyway
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    one_line_error(["download", "Qwen/Qwen2.5-0.5B", "--out", str(mine)], "is not empty", "--force")
    one_line_error(["download", "Qwen/Qwen2.5-0.5B", "--out", str(mine / "notes.txt")], "is a file")
    assert (mine / "notes.txt").read_text() == "mine"


def test_train_out_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f", tmp_path / "f" / "run"):
        one_line_error(["train", "grpo", f"trainer.out_dir={out}"], "is a file, not a folder")
    assert (tmp_path / "f").read_text() == "x"


def test_plot_and_ls_of_a_recipes_runs_folder_name_latest(tmp_path: Path) -> None:
    runs = tmp_path / "runs" / "grpo"
    (runs / "20260101-000000").mkdir(parents=True)
    (runs / "latest").symlink_to("20260101-000000")
    one_line_error(["plot", str(runs)], "holds runs", str(runs / "latest"))
    one_line_error(["ckpt", "ls", str(runs)], "holds runs", str(runs / "latest"))
