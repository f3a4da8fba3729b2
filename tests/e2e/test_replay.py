"""Rollout replay: a replayed run's losses equal the recorded run's exactly; a mismatch is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlkit.cli.app import app

TINY = [
    "trainer.total_steps=2",
    "data.batch_size=4",
    "actor.mini_batch_size=2",  # two updates a step: the second step starts from updated weights
    "rollout.n=2",
    "data.max_response_length=6",
    "trainer.val_every=0",
    "data.synthetic_size=64",
    "trainer.loggers=[jsonl]",
    "trainer.trace_every=0",
]
COMPARED = ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "reward/mean", "advantages/mean")


def _train(*args: str) -> str:
    result = CliRunner().invoke(app, ["train", "grpo", *TINY, *args])
    return f"{result.exit_code}\n{result.output}"


def _steps(run: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "actor/pg_loss" in r]


def test_replay_repeats_the_recorded_losses_exactly(tmp_path: Path, ray_session: None) -> None:
    recorded, replayed = tmp_path / "recorded", tmp_path / "replayed"
    out = _train("trainer.replay=record", f"trainer.out_dir={recorded}")
    assert out.startswith("0\n"), out
    assert sorted(p.name for p in (recorded / "replay").glob("*.safetensors")) == [
        "step_000001_round_1.safetensors",
        "step_000002_round_1.safetensors",
    ]
    out = _train("trainer.replay=replay", f"trainer.replay_dir={recorded / 'replay'}", f"trainer.out_dir={replayed}")
    assert out.startswith("0\n"), out
    a, b = _steps(recorded), _steps(replayed)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for key in COMPARED:
        assert [r[key] for r in a] == [r[key] for r in b], key  # exactly: the same batch, the same math


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("rollout.n=4", "was made with rollout.n=2, this run has rollout.n=4"),
        ("trainer.total_steps=3", "has no step 3"),
    ],
)
def test_a_replay_that_does_not_match_is_one_line(tmp_path: Path, change: str, message: str) -> None:
    folder = tmp_path / "rec"
    folder.mkdir()
    index = {"config": {}, "steps": {"1": {"1": "x"}, "2": {"1": "x"}}}
    # the recording's config as the recorder writes it, for this TINY config
    from rlkit.cli._checks import compose
    from rlkit.config.compose import to_dataclass
    from rlkit.trainer.replay import recorded_config

    cfg = compose("grpo", profile=None, config_file=None, overrides=TINY, command="train")
    index["config"] = recorded_config(to_dataclass(cfg))
    (folder / "recording.json").write_text(json.dumps(index))
    out = _train("trainer.replay=replay", f"trainer.replay_dir={folder}", change, f"trainer.out_dir={tmp_path / 'r'}")
    assert out.startswith("2\n") and message in out and "Traceback" not in out, out
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_replay_without_a_recording_is_one_line(tmp_path: Path) -> None:
    out = _train("trainer.replay=replay", f"trainer.out_dir={tmp_path / 'r'}")
    assert out.startswith("2\n") and "needs trainer.replay_dir" in out, out
    out = _train("trainer.replay=replay", f"trainer.replay_dir={tmp_path}", f"trainer.out_dir={tmp_path / 'r'}")
    assert out.startswith("2\n") and "no recording there" in out, out
