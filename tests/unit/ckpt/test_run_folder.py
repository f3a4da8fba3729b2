"""Run folders: a fresh runs/<recipe>/<time> per run, the latest pointer, what trainer.resume picks."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlkit.ckpt.run_folder import (
    point_latest,
    read_latest_run,
    recipe_runs,
    resolve_run_folder,
)
from rlkit.errors import UserError


def test_unset_out_dir_gives_each_run_a_fresh_folder(tmp_path: Path) -> None:
    first = resolve_run_folder(None, "auto", "grpo", root=tmp_path)
    second = resolve_run_folder(None, "auto", "grpo", root=tmp_path)  # the same second: -2
    assert first.fresh and second.fresh and first.resume == second.resume == "never"
    assert first.path != second.path and first.path.parent == second.path.parent == tmp_path / "grpo"
    assert first.path.is_dir() and second.path.is_dir()
    link = tmp_path / "grpo" / "latest"
    assert link.is_symlink() and read_latest_run(tmp_path / "grpo") == second.path.resolve()


def test_resume_latest_continues_the_newest_run_in_its_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no earlier run of grpo"):
        resolve_run_folder(None, "latest", "grpo", root=tmp_path)
    made = resolve_run_folder(None, "auto", "grpo", root=tmp_path)
    again = resolve_run_folder(None, "latest", "grpo", root=tmp_path)
    assert again.path.resolve() == made.path.resolve() and again.resume == "latest" and not again.fresh


def test_latest_falls_back_to_a_text_pointer(tmp_path: Path) -> None:
    runs = tmp_path / "ppo"
    (runs / "20260101-000000").mkdir(parents=True)
    (runs / "latest").write_text("20260101-000000\n")  # what point_latest writes where symlinks fail
    assert read_latest_run(runs) == (runs / "20260101-000000").resolve()
    point_latest(runs, runs / "20260101-000000")
    assert read_latest_run(runs) == (runs / "20260101-000000").resolve()


def test_explicit_out_dir_keeps_auto(tmp_path: Path) -> None:
    folder = resolve_run_folder(str(tmp_path / "mine"), "auto", "grpo", root=tmp_path / "runs")
    assert folder.path == tmp_path / "mine" and folder.resume == "auto" and not folder.fresh
    assert not (tmp_path / "runs").exists()


def test_resume_path_of_a_checkpoint_continues_in_its_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = tmp_path / "old" / "checkpoints" / "step_2"
    step.mkdir(parents=True)
    (step / "manifest.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    folder = resolve_run_folder(None, str(step), "grpo", root=tmp_path / "runs")
    assert folder.path == Path("old") and folder.resume == str(step)
    whole_run = resolve_run_folder(None, str(tmp_path / "old"), "grpo", root=tmp_path / "runs")
    assert whole_run.path == Path("old")


def test_out_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f", tmp_path / "f" / "run"):
        with pytest.raises(UserError, match="is a file, not a folder"):
            resolve_run_folder(str(out), "auto", "grpo")


def test_recipe_file_names_are_path_safe() -> None:
    assert recipe_runs("grpo") == Path("runs/grpo")
    assert recipe_runs("configs/my grpo.yaml") == Path("runs/my_grpo")


def test_a_fresh_folder_the_run_wrote_nothing_into_goes_away(tmp_path: Path) -> None:
    from rlkit.ckpt.lock import RunLock
    from rlkit.ckpt.run_folder import discard_if_unused

    kept = resolve_run_folder(None, "auto", "grpo", root=tmp_path)
    (kept.path / "config.yaml").write_text("x")
    failed = resolve_run_folder(None, "auto", "grpo", root=tmp_path)
    RunLock.acquire(failed.path).release()  # the lock file is all a run that failed early leaves
    assert discard_if_unused(failed) and not failed.path.exists()
    assert read_latest_run(tmp_path / "grpo") == kept.path.resolve()  # latest points back
    assert not discard_if_unused(kept) and (kept.path / "config.yaml").is_file()  # written: kept
    (tmp_path / "mine").mkdir()
    explicit = resolve_run_folder(str(tmp_path / "mine"), "auto", "grpo", root=tmp_path)
    assert not discard_if_unused(explicit) and explicit.path.is_dir()  # the user's folder: never
    made = resolve_run_folder(str(tmp_path / "new"), "auto", "grpo", root=tmp_path)
    assert discard_if_unused(made) and not made.path.exists()  # made by this run, left empty


def test_resume_path_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such checkpoint or run folder"):
        resolve_run_folder(None, str(tmp_path / "nope"), "grpo", root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
