"""Atomic saves, the manifest, damaged checkpoints, what ``trainer.resume`` picks, the run folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlkit.ckpt import (
    check_compatible,
    list_checkpoints,
    prepare_run_dir,
    read_resume_point,
    resolve_resume,
    verify_checkpoint,
)
from rlkit.ckpt.layout import read_latest
from rlkit.ckpt.resume import config_changes
from rlkit.errors import UserError
from rlkit.models import load_hf_config

from .conftest import CONFIG, write_checkpoint

pytestmark = pytest.mark.usefixtures("process_group")


@pytest.fixture(scope="module")
def run_template(actor: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with complete checkpoints at steps 1, 2 and 3 and a metrics file."""
    run = tmp_path_factory.mktemp("run")
    for step in (1, 2, 3):
        write_checkpoint(run, step, {"actor": actor})
    rows = [{"step": s, "reward/mean": s / 10} for s in range(1, 5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


@pytest.fixture
def run(run_template: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run_template, out)
    return out


def ck(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step}"


def test_layout_manifest_and_latest(run: Path) -> None:
    manifest = verify_checkpoint(ck(run, 3))
    assert manifest["step"] == 3 and manifest["roles"] == ["actor"] and manifest["version"] == 1
    for name in (
        "trainer_state.json",
        "config.yaml",
        "actor/state.json",
        "actor/config.json",
        "actor/dcp/.metadata",
        "rng/rank_0.json",
    ):
        assert name in manifest["files"]
    assert "tokenizer/tokenizer.json" in manifest["files"]
    assert read_latest(run / "checkpoints") == "step_3"
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_keep_last_prunes_oldest(actor: object, tmp_path: Path) -> None:
    for step in (1, 2, 3):
        write_checkpoint(tmp_path, step, {"actor": actor}, keep_last=2)
    assert [c.step for c in list_checkpoints(tmp_path / "checkpoints")] == [2, 3]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing_shard", r"__0_0\.distcp is missing"),
        ("truncated", r"__0_0\.distcp has \d+ bytes but the manifest says"),
        ("grown", r"state\.json has \d+ bytes but the manifest says"),
        ("no_manifest", r"manifest\.json is missing"),
        ("bad_manifest", r"manifest\.json is not valid JSON"),
    ],
)
def test_damaged_checkpoint_is_refused_naming_the_file(run: Path, damage: str, message: str) -> None:
    folder = ck(run, 3)
    shard = folder / "actor" / "dcp" / "__0_0.distcp"
    if damage == "missing_shard":
        shard.unlink()
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:1000])
    elif damage == "grown":
        with open(folder / "actor" / "state.json", "a") as f:
            f.write(" ")
    elif damage == "no_manifest":
        (folder / "manifest.json").unlink()
    else:
        (folder / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match=message) as err:
        verify_checkpoint(folder)
    assert "step_2" in str(err.value.hint)  # names the intact older one
    # auto never falls back silently: the newest is damaged -> stop, naming the older PATH
    with pytest.raises(UserError, match=message) as err:
        resolve_resume("auto", run)
    assert f"trainer.resume={ck(run, 2)}" in str(err.value.hint)


def test_corrupt_json_of_right_size_is_refused(run: Path) -> None:
    state = ck(run, 3) / "trainer_state.json"
    state.write_text("x" * len(state.read_bytes()))
    with pytest.raises(UserError, match=r"trainer_state\.json does not match its checksum"):
        read_resume_point(ck(run, 3))
    drop_checksums(ck(run, 3))  # as an older rlkit wrote it: the JSON parser still catches it
    with pytest.raises(UserError, match=r"trainer_state\.json is not valid JSON"):
        read_resume_point(ck(run, 3))


def drop_checksums(folder: Path) -> None:
    """Rewrite a manifest the way rlkit versions without checksums wrote it."""
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["checksums"], manifest["checksum"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_auto_picks_newest_complete_and_ignores_interrupted_saves(run: Path) -> None:
    (run / "checkpoints" / "step_4.tmp" / "actor").mkdir(parents=True)  # a save killed midway
    point = resolve_resume("auto", run)
    assert point is not None and point.path == ck(run, 3).resolve() and point.step == 3
    assert point.state["sampler"] == {"epoch": 0, "position": 3}
    prepare_run_dir(run, point)
    assert not (run / "checkpoints" / "step_4.tmp").exists()
    assert [c.step for c in list_checkpoints(run / "checkpoints")] == [1, 2, 3]


def test_auto_without_checkpoints_and_never(tmp_path: Path, run: Path) -> None:
    assert resolve_resume("auto", tmp_path / "fresh") is None
    assert resolve_resume("never", run) is None


def test_resume_path_archives_later_checkpoints(run: Path) -> None:
    point = resolve_resume(str(ck(run, 2)), run)
    assert point is not None and point.step == 2
    prepare_run_dir(run, point)
    assert [c.step for c in list_checkpoints(run / "checkpoints")] == [1, 2]
    assert read_latest(run / "checkpoints") == "step_2"
    (archive,) = (run / "archive").iterdir()
    assert (archive / "checkpoints" / "step_3" / "manifest.json").is_file()
    assert (archive / "metrics.jsonl").is_file()  # the full history, before the resumed run drops rows


def test_fresh_start_archives_everything(run: Path) -> None:
    (run / "config.yaml").write_text("recipe: grpo\n")  # the old run's config goes with its checkpoints
    prepare_run_dir(run, None)
    assert list_checkpoints(run / "checkpoints") == [] and not (run / "metrics.jsonl").exists()
    (archive,) = (run / "archive").iterdir()
    assert {p.name for p in (archive / "checkpoints").iterdir()} == {"step_1", "step_2", "step_3", "latest"}
    assert (archive / "metrics.jsonl").is_file() and (archive / "config.yaml").is_file()


def test_sample_traces_are_archived_not_lost(run: Path, tmp_path: Path) -> None:
    traces = run / "traces"
    traces.mkdir()
    for step in (1, 2, 3):
        (traces / f"step_{step:06d}.parquet").write_bytes(b"PAR1")
    prepare_run_dir(run, resolve_resume(str(ck(run, 2)), run))  # resume: step 3's traces run again
    assert sorted(p.name for p in traces.iterdir()) == ["step_000001.parquet", "step_000002.parquet"]
    (archive,) = (run / "archive").iterdir()
    assert (archive / "traces" / "step_000003.parquet").is_file()
    prepare_run_dir(run, None)  # a fresh start in the used folder: every trace goes to the archive
    assert not traces.exists()
    assert sum(1 for _ in (run / "archive").rglob("step_*.parquet")) == 3


def test_resume_into_another_folder_copies_metrics_up_to_the_step(run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    point = resolve_resume(str(ck(run, 2)), other)
    assert point is not None
    prepare_run_dir(other, point)
    rows = [json.loads(line) for line in (other / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


def test_not_a_checkpoint(run: Path) -> None:
    with pytest.raises(UserError, match="not an rlkit checkpoint folder") as err:
        resolve_resume(str(run / "checkpoints"), run)
    assert "step_3" in str(err.value.hint)
    with pytest.raises(UserError, match="no such checkpoint folder"):
        resolve_resume(str(run / "nope"), run)


def test_compatibility(run: Path) -> None:
    point = read_resume_point(ck(run, 3))
    tiny = load_hf_config("builtin:tiny")
    check_compatible(point, roles=["actor"], hf_configs={"actor": tiny}, config=CONFIG)
    with pytest.raises(UserError, match="trained actor but this run trains actor\\+critic"):
        check_compatible(
            point, roles=["actor", "critic"], hf_configs={"actor": tiny, "critic": tiny}, config=CONFIG
        )
    bigger = {**tiny, "hidden_size": 256}
    with pytest.raises(
        UserError,
        match=r"actor/config\.json: hidden_size=128, but this run's actor model has hidden_size=256",
    ):
        check_compatible(point, roles=["actor"], hf_configs={"actor": bigger}, config=CONFIG)


def test_config_changes_skip_run_length_keys() -> None:
    after = {**CONFIG, "actor": {"lr": 2e-3}, "trainer": {"seed": 1, "total_steps": 99}}
    assert config_changes(CONFIG, after) == ["actor.lr: 0.001 -> 0.002"]


def test_a_checkpoint_resumes_only_with_the_trainer_that_wrote_it(run: Path) -> None:
    from dataclasses import replace

    point = read_resume_point(ck(run, 3))  # an RL checkpoint: trainer_state.json names no trainer
    tiny = {"actor": load_hf_config("builtin:tiny")}
    with pytest.raises(UserError, match="written by `rlkit train`, which `rlkit sft` cannot continue") as err:
        check_compatible(point, roles=["actor"], hf_configs=tiny, config=CONFIG, trainer="sft")
    assert f"rlkit ckpt merge {point.path} --out DIR" in str(err.value.hint)
    sft_point = replace(point, state={**point.state, "trainer": "sft"})
    (point.path / "hf").mkdir()
    with pytest.raises(UserError, match="written by `rlkit sft`, which `rlkit train` cannot continue") as err:
        check_compatible(sft_point, roles=["actor"], hf_configs=tiny, config=CONFIG)
    assert f"model.path={point.path / 'hf'}" in str(err.value.hint)
    check_compatible(sft_point, roles=["actor"], hf_configs=tiny, config=CONFIG, trainer="sft")


def test_resume_refuses_a_changed_key_the_state_depends_on(run: Path) -> None:
    point = read_resume_point(ck(run, 3))
    tiny = {"actor": load_hf_config("builtin:tiny")}
    for key, value, old in (
        ("trainer.seed", 2, "1"),
        ("model.path", "builtin:tiny-arith", "builtin:tiny"),
    ):
        group, name = key.split(".")
        changed = {**CONFIG, group: {**CONFIG.get(group, {}), name: value}}
        with pytest.raises(UserError, match=f"{key} was .* in that run, this run has {value!r}") as err:
            check_compatible(point, roles=["actor"], hf_configs=tiny, config=changed)
        assert f"set {key}={old}" in str(err.value.hint) and "trainer.resume=never" in str(err.value.hint)
    # what may change: the learning rate, the run length
    allowed = {**CONFIG, "actor": {"lr": 5e-4}, "trainer": {**CONFIG["trainer"], "total_steps": 99}}
    check_compatible(point, roles=["actor"], hf_configs=tiny, config=allowed)


def test_latest_needs_a_checkpoint_and_a_run_folder_path_means_its_newest(run: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no checkpoint to continue from"):
        resolve_resume("latest", tmp_path / "empty")
    point = resolve_resume(str(run), tmp_path / "elsewhere")
    assert point is not None and point.step == 3


def test_keep_last_is_the_runs_own_unless_asked(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    from rlkit.ckpt.resume import keep_last_for

    assert keep_last_for(None, None) == 3  # a new run
    point = read_resume_point(ck(run, 3))
    assert point.state["keep_last"] == 0  # write_checkpoint's keep_last
    assert keep_last_for(point, None) == 0  # a resume without trainer.keep_last keeps the run's
    assert "replaces" not in capsys.readouterr().err
    assert keep_last_for(point, 2) == 2
    err = capsys.readouterr().err
    assert "trainer.keep_last=2 replaces this run's 0: the next save removes step_1, step_2" in err
    assert keep_last_for(point, 2, will_save=False) == 2  # nothing left to train: no save, no warning
    assert "replaces" not in capsys.readouterr().err
    old = replace(point, state={k: v for k, v in point.state.items() if k != "keep_last"})
    assert keep_last_for(old, None) == 3  # an older checkpoint: its config's value (here: unset)
