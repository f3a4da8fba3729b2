"""``rlkit sft`` end to end through the CLI: metrics, config, the HF export (and a LoRA adapter) load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlkit.cli.app import app
from rlkit.models import CausalLM, init_weights, load_causal_lm, load_tokenizer, save_hf, tiny_config

TINY = [
    "trainer.total_steps=3",
    "data.synthetic_size=96",
    "data.batch_size=8",
    "sft.val_every=2",
    "trainer.loggers=[jsonl]",
]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_default_sft_runs_and_exports_a_loadable_model(tmp_path: Path, ray_session: None) -> None:
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["sft", *TINY, f"trainer.out_dir={run}"])
    assert result.exit_code == 0, result.output
    hf = run / "checkpoints" / "step_3" / "hf"
    assert f"rlkit train grpo model.path={hf}" in result.output
    rows = _rows(run)
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for key in ("train/loss", "actor/lr", "actor/grad_norm", "throughput/tokens_per_s", "timing/step_s"):
        assert key in steps[-1], key
    assert [r["step"] for r in rows if "val/loss" in r] == [0, 2, 3]
    assert steps[0]["data/truncated"] == 0
    assert (run / "config.yaml").is_file() and (run / "data" / "train.jsonl").is_file()
    # The export is a Hugging Face folder: transformers loads it and agrees with rlkit's loader.
    ids = load_tokenizer(str(hf))("<|im_start|>user\n12+30=<|im_end|>\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = load_causal_lm(str(hf))(ids)
        got = AutoModelForCausalLM.from_pretrained(hf).eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the export is part of a complete checkpoint (tests/e2e/test_sft_resume.py resumes them)
    assert (run / "checkpoints" / "step_3" / "manifest.json").is_file()


def test_lora_sft_writes_a_peft_adapter(tmp_path: Path, ray_session: None) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = CausalLM(tiny_config())
    init_weights(base, seed=0)
    save_hf(base, tmp_path / "base", tokenizer=load_tokenizer("builtin:tiny"))
    run = tmp_path / "run"
    overrides = [f"model.path={tmp_path / 'base'}", "model.lora_rank=4", "actor.lr=1e-2"]
    result = CliRunner().invoke(app, ["sft", *TINY, *overrides, f"trainer.out_dir={run}"])
    assert result.exit_code == 0, result.output
    adapter = run / "checkpoints" / "step_3" / "adapter"
    assert f"LoRA adapter (PEFT): {adapter}" in result.output
    ids = torch.tensor([[257, 117, 115, 101, 114, 10, 49, 43, 50, 61]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step_3" / "hf").eval()
        peft = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tmp_path / "base"), adapter
        ).eval()
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
        want, got = merged(input_ids=ids).logits, peft(input_ids=ids).logits
        assert not torch.allclose(plain(input_ids=ids).logits, want, atol=1e-4)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sft", "grpo"], "unknown recipe 'grpo'"),
        (["sft", "data.synthetic=countdown"], "no reference answers for data.synthetic=countdown"),
    ],
)
def test_sft_user_errors_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [*args, f"trainer.out_dir={tmp_path}"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
