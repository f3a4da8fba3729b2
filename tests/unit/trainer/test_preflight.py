"""The checks that need no Ray and no weights (``--dry-run`` and the start of every run)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from rlkit.config.compose import to_dataclass
from rlkit.config.load import load_config
from rlkit.data.rl_parquet import rows_to_table
from rlkit.data_prep import arith
from rlkit.errors import UserError
from rlkit.trainer.preflight import preflight


def _parquet(path: Path, rows: list[dict]) -> str:
    pq.write_table(rows_to_table(rows), path)
    return str(path)


def _parquet_as_is(path: Path, rows: list[dict]) -> str:
    """Exactly the given columns (rows_to_table adds every schema column)."""
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _check(*overrides: str, command: str = "train") -> list[str]:
    return preflight(
        to_dataclass(load_config("grpo" if command == "train" else "sft", overrides=overrides)), command
    )


def test_embedded_default_passes_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(*args: object, **kwargs: object) -> None:
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", init)  # a tripwire: the session may have started Ray already
    lines = _check()
    assert any(line.startswith("hardware:") for line in lines)
    assert any("built-in scorers for arith" in line for line in lines)


def test_data_files_columns_and_sources(tmp_path: Path) -> None:
    good = _parquet(tmp_path / "train.parquet", arith.generate(4, seed=0))
    assert any("1 parquet file(s)" in line for line in _check(f"data.train_files={good}"))
    with pytest.raises(UserError, match=r"no such data file: .*missing.parquet"):
        _check(f"data.train_files={tmp_path / 'missing.parquet'}")
    rows = arith.generate(4, seed=0)
    for row in rows:
        row.pop("reward_model")
    no_column = _parquet_as_is(tmp_path / "nocol.parquet", rows)
    with pytest.raises(UserError, match=r"no column 'reward_model' \(columns present: "):
        _check(f"data.train_files={no_column}")
    with pytest.raises(UserError, match=r"no column 'question'"):
        _check(f"data.train_files={good}", "data.prompt_key=question")


def test_ground_truth_field_is_required(tmp_path: Path) -> None:
    rows = arith.generate(2, seed=0)
    for row in rows:
        row["reward_model"] = {"style": "rule", "answer": "1"}
    bad = _parquet(tmp_path / "gt.parquet", rows)
    with pytest.raises(UserError, match=r"'reward_model' has no field 'ground_truth'"):
        _check(f"data.train_files={bad}")


def test_unknown_data_source_names_it_and_the_known_ones(tmp_path: Path) -> None:
    rows = arith.generate(3, seed=0)
    rows[1]["data_source"] = "my/dataset"
    file = _parquet(tmp_path / "src.parquet", rows)
    with pytest.raises(UserError) as err:
        _check(f"data.val_files={file}")
    assert "'my/dataset'" in err.value.message and "openai/gsm8k" in err.value.message
    assert "reward.custom.path" in (err.value.hint or "")


def test_custom_reward_is_parsed_not_run(tmp_path: Path) -> None:
    rows = arith.generate(2, seed=0)
    rows[0]["data_source"] = "my/dataset"
    file = _parquet(tmp_path / "src.parquet", rows)
    marker = tmp_path / "ran"
    score = tmp_path / "score.py"
    score.write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 1.0\n"
    )
    lines = _check(f"data.train_files={file}", f"reward.custom.path={score}")
    assert any("parsed, not run" in line for line in lines) and not marker.exists()
    with pytest.raises(UserError, match="defines no 'score_fn'"):
        _check(f"reward.custom.path={score}", "reward.custom.name=score_fn")
    with pytest.raises(UserError, match="no such file"):
        _check(f"reward.custom.path={tmp_path / 'nope.py'}")


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_logger_that_is_not_installed(name: str) -> None:
    import importlib.util

    if importlib.util.find_spec(name) is not None:
        assert any(name in line for line in _check(f"trainer.loggers=[console,{name}]"))
        return
    with pytest.raises(UserError, match=f"trainer.loggers has {name} but it is not installed"):
        _check(f"trainer.loggers=[console,{name}]")


def test_several_nodes_need_a_cluster_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    two = ("hardware.device=cpu", "hardware.nodes=2")
    with pytest.raises(UserError, match="hardware.nodes=2 needs an existing Ray cluster") as info:
        _check(*two)
    assert "ray start --head" in str(info.value.hint)
    (line,) = [x for x in _check(*two, "hardware.ray_address=10.0.0.1:6379") if x.startswith("hardware:")]
    assert line.endswith("(2 worker(s) on 2 nodes of the Ray cluster at 10.0.0.1:6379)")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert any("cluster at 10.0.0.2:6379" in x for x in _check(*two))


def test_gpu_profile_without_a_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = to_dataclass(load_config("grpo", profile="h100x1"))
    with pytest.raises(UserError, match="no CUDA device was found"):
        preflight(cfg)


def test_native_engine_needs_a_native_architecture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # offline, an uncached hub id is an error
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UserError, match=r"rollout.engine=native cannot run this model.*model_type 'gpt2'"):
        _check(f"model.path={folder}", "rollout.engine=native")
    assert any("rollout engine: hf (auto)" in line for line in _check(f"model.path={folder}"))
    assert any("transformers fallback" in line for line in _check(f"model.path={folder}", command="sft"))
    with pytest.raises(UserError, match="no such folder"):
        _check(f"model.path={tmp_path / 'absent'}")
    with pytest.raises(UserError, match="model.tokenizer: no such folder"):
        _check(f"model.tokenizer={tmp_path / 'absent'}")
    lines = _check("model.path=someone/not-cached-model-xyz")
    assert any("checked when the run fetches it" in line for line in lines)


@pytest.mark.parametrize("command", ["train", "sft"])
def test_lora_target_modules_name_linear_layers(command: str) -> None:
    assert any(line == "LoRA: off (every weight of the actor trains)" for line in _check(command=command))
    lines = _check("model.lora_rank=8", "model.lora_target_modules=[q_proj,v_proj]", command=command)
    assert "LoRA: rank 8, alpha 16, on q_proj, v_proj" in lines
    with pytest.raises(UserError, match="no linear module named 'lm_head'") as err:
        _check("model.lora_rank=8", "model.lora_target_modules=[lm_head]", command=command)
    assert "\n" not in err.value.message and "q_proj" in str(err.value.hint)


def test_sft_data_columns(tmp_path: Path) -> None:
    file = _parquet_as_is(tmp_path / "chat.parquet", [{"messages": [{"role": "user", "content": "hi"}]}])
    assert any("columns messages" in line for line in _check(f"data.train_files={file}", command="sft"))
    with pytest.raises(UserError, match="no column 'q'"):
        _check(f"data.train_files={file}", "sft.prompt_key=q", "sft.response_key=a", command="sft")


def test_dry_run_refuses_what_the_run_would_refuse_before_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks ``rlkit train`` makes as it starts are in the dry run too (found by re-running issue 19's probes)."""
    (tmp_path / "afile").write_text("notes")
    with pytest.raises(UserError, match="afile is a file, not a folder"):
        _check(f"trainer.out_dir={tmp_path / 'afile'}")
    assert _check(f"trainer.out_dir={tmp_path / 'new'}")[-1] == f"run folder: {tmp_path / 'new'}"

    pickled = tmp_path / "rm"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "qwen2", "num_labels": 1}))
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UserError, match="only pickled PyTorch weights"):
        _check(f"reward.model_path={pickled}")

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set and model org/not-cached is not in"):
        _check("model.path=org/not-cached")


def test_partial_rollouts_need_an_engine_that_takes_weights_mid_generation() -> None:
    continued = ["trainer.partial_rollouts=continue", "trainer.mode=async", "hardware.placement=split"]
    continued += ["hardware.devices_per_node=2", "hardware.rollout_devices=1"]
    for engine in ("vllm", "server"):
        with pytest.raises(UserError) as err:
            _check(*continued, f"rollout.engine={engine}")
        message = err.value.message
        assert (
            f"rollout.engine={engine} cannot take new weights" in message and "only native, hf can" in message
        )
        assert "\n" not in message and "trainer.partial_rollouts=finish" in (err.value.hint or "")
    for engine in ("auto", "native", "hf"):
        assert any("rollout engine:" in line for line in _check(*continued, f"rollout.engine={engine}"))
