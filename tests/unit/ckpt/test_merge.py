"""Merge to HF: transformers loads it with equal logits, --verify fails loudly, LoRA, generate, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlkit.ckpt import load_checkpoint_model, load_role_weights, merge_checkpoint
from rlkit.ckpt.verify import check_tensors, probe_ids, verify_merged
from rlkit.cli.app import app
from rlkit.errors import UserError
from rlkit.models import load_causal_lm
from rlkit.rollout.base import SamplingParams
from rlkit.rollout.offline import run_generate

from .conftest import make_critic, trained_step, write_checkpoint

pytestmark = pytest.mark.usefixtures("process_group")


@pytest.fixture(scope="module")
def run(actor: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with an actor+critic checkpoint at step 2 and metrics."""
    critic = make_critic(seed=0)
    trained_step(critic, seed=2)
    out = tmp_path_factory.mktemp("merge_run")
    write_checkpoint(out, 2, {"actor": actor, "critic": critic})
    rows = [{"step": 1, "reward/mean": 0.25}, {"step": 2, "reward/mean": 0.5, "val/reward/mean": 0.75}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def step2(run: Path) -> Path:
    return run / "checkpoints" / "step_2"


def test_merge_actor_loads_in_transformers_with_equal_logits(
    run: Path, actor: object, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    result = merge_checkpoint(step2(run), tmp_path / "hf", verify=True)
    assert result.role == "actor" and result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    ids = probe_ids(320)
    native = load_causal_lm("builtin:tiny", dtype=torch.float32)
    full = dict(actor.named_full_tensors(None))  # type: ignore[attr-defined]
    missing, _ = native.load_state_dict(full, strict=False)
    assert missing == ["lm_head.weight"]  # tied to the embedding
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, native(ids), atol=1e-4, rtol=1e-4)


def test_merge_critic_bf16(run: Path, tmp_path: Path) -> None:
    result = merge_checkpoint(step2(run), tmp_path / "critic", role="critic", dtype="bfloat16", verify=True)
    config = json.loads((tmp_path / "critic" / "config.json").read_text())
    assert result.role == "critic" and config["architectures"] == ["Qwen2ForTokenClassification"]
    assert config["dtype"] == "bfloat16"


def test_verify_fails_loudly_on_a_mismatch(run: Path, tmp_path: Path) -> None:
    merge_checkpoint(step2(run), tmp_path / "hf")
    weights = load_role_weights(step2(run))
    changed = dict(weights.tensors)
    changed["model.norm.weight"] = changed["model.norm.weight"] + 1.0
    with pytest.raises(UserError, match="tensor model.norm.weight .* differs"):
        check_tensors(tmp_path / "hf", changed)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["rms_norm_eps"] = 0.5  # the weights are right, the model they describe is not
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="logits of the merged model .* differ"):
        verify_merged(tmp_path / "hf", weights, None)


def test_merge_bad_options(run: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no role 'ref'"):
        merge_checkpoint(step2(run), tmp_path / "x", role="ref")
    with pytest.raises(UserError, match="--dtype"):
        merge_checkpoint(step2(run), tmp_path / "x", dtype="int8")
    with pytest.raises(UserError, match="no LoRA adapters"):
        merge_checkpoint(step2(run), tmp_path / "x", adapter=True)


def test_generate_from_checkpoint_equals_generate_from_merged(run: Path, tmp_path: Path) -> None:
    merge_checkpoint(step2(run), tmp_path / "hf")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "1+2="}\n{"prompt": "hello there"}\n')
    params = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=5)
    outs = []
    for i, model in enumerate([str(step2(run)), str(tmp_path / "hf")]):
        out = tmp_path / f"g{i}.jsonl"
        run_generate(model, prompts, out, params=params, chat_template=False, device="cpu")
        outs.append(out.read_text())
    assert outs[0] == outs[1] and outs[0]
    model = load_checkpoint_model(step2(run), dtype=torch.float32, device="cpu")
    assert type(model).__name__ == "CausalLM"


def test_lora_checkpoint_merges_into_the_base(tmp_path: Path) -> None:
    from rlkit.training.sft import SFTRole

    role = SFTRole("builtin:tiny", total_steps=10, lr=1e-2, lora_rank=4, lora_alpha=8, seed=1)
    trained_step(role, seed=4)  # moves the adapters' B away from zero: the merge is not a no-op
    write_checkpoint(tmp_path / "sft", 1, {"actor": role})
    folder = tmp_path / "sft" / "checkpoints" / "step_1"
    weights = load_role_weights(folder)
    assert weights.lora == {"rank": 4, "alpha": 8, "target_modules": role.lora_targets}
    expected = dict(role.named_full_tensors(None))  # the role's own merge
    expected.pop("lm_head.weight", None)
    assert weights.tensors.keys() == expected.keys()
    assert all(torch.equal(weights.tensors[k], expected[k]) for k in expected)
    result = merge_checkpoint(folder, tmp_path / "merged", verify=True)
    assert result.max_abs_diff is not None
    adapter = merge_checkpoint(folder, tmp_path / "adapter", adapter=True)
    config = json.loads((adapter.out / "adapter_config.json").read_text())
    assert (
        config["r"] == 4 and config["lora_alpha"] == 8 and config["base_model_name_or_path"] == "builtin:tiny"
    )
    assert (adapter.out / "adapter_model.safetensors").is_file()
    assert replace(weights, lora=None).lora is None


def test_cli_ls_and_merge(run: Path, tmp_path: Path) -> None:
    (run / "checkpoints" / "step_3.tmp").mkdir(exist_ok=True)
    result = CliRunner().invoke(app, ["ckpt", "ls", str(run)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "complete (latest)" in out and "interrupted" in out and "reward" in out and "0.5" in out
    assert "val reward" in out and "0.75" in out
    (run / "checkpoints" / "step_3.tmp").rmdir()

    result = CliRunner().invoke(
        app, ["ckpt", "merge", str(step2(run)), "--out", str(tmp_path / "hf"), "--verify"]
    )
    assert result.exit_code == 0, result.output
    assert "verified" in result.output and (tmp_path / "hf" / "model.safetensors").is_file()

    result = CliRunner().invoke(app, ["ckpt", "merge", str(run), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "not an rlkit checkpoint folder" in result.output
    assert "Traceback" not in result.output


def test_merge_never_overwrites_a_folder_unasked(run: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty") as err:
        merge_checkpoint(step2(run), mine)
    assert "--force" in str(err.value.hint) and {p.name for p in mine.iterdir()} == {"notes.txt"}
    (mine / "model-00002-of-00002.safetensors").write_bytes(b"old shard of an earlier merge")
    merge_checkpoint(step2(run), mine, force=True, verify=True)  # replaces only what merge writes
    names = {p.name for p in mine.iterdir()}
    assert "notes.txt" in names and "model.safetensors" in names and "config.json" in names
    assert "model-00002-of-00002.safetensors" not in names and (mine / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".mine.*"))  # no staging folder left behind


@pytest.mark.parametrize("where", ["run", "checkpoint", "inside", "above"])
def test_merge_refuses_the_checkpoint_and_its_run_even_with_force(run: Path, where: str) -> None:
    out = {
        "run": run,
        "checkpoint": step2(run),
        "inside": step2(run) / "hf",
        "above": run.parent,
    }[where]
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    result = CliRunner().invoke(app, ["ckpt", "merge", str(step2(run)), "--out", str(out), "--force"])
    assert result.exit_code == 2, result.output
    assert "is, contains or lies inside" in result.output and "Traceback" not in result.output
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    merge_checkpoint(step2(run), run.parent / f"elsewhere_{where}")  # the checkpoint is intact
