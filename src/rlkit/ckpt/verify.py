"""``rlkit ckpt merge --verify``: the merged folder must hold exactly the checkpoint's model.

Two checks, both loud on failure: every tensor of the written safetensors equals the checkpoint's
(cast to the output dtype) bit for bit, and the merged folder loaded back with transformers gives
the same logits (values, for a critic) on probe inputs as the checkpoint's weights in rlkit's own
model, both computed in fp32 from the same weight values.

Shape legend: B = probe rows, L = probe length, V = vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rlkit.errors import UserError
from rlkit.models import load_state_dict

if TYPE_CHECKING:
    from rlkit.ckpt.merge import RoleWeights

PROBE_ROWS = 2
PROBE_LEN = 24
# Relative to the largest reference logit: fp32 kernels of two implementations differ by ~1e-6.
RTOL = 1e-4


def _expected(weights: RoleWeights, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {
        n: (t.to(dtype) if dtype is not None and t.is_floating_point() else t)
        for n, t in weights.tensors.items()
    }


def check_tensors(out: Path, expected: dict[str, torch.Tensor]) -> None:
    """Every written tensor equals the expected one exactly, and none is missing or extra."""
    written = load_state_dict(out)
    if set(written) != set(expected):
        missing = sorted(set(expected) - set(written))[:3]
        extra = sorted(set(written) - set(expected))[:3]
        raise UserError(
            f"--verify: {out} has other tensors than the checkpoint (missing {missing}, extra {extra})"
        )
    for name, tensor in expected.items():
        if written[name].dtype != tensor.dtype or not torch.equal(written[name], tensor):
            raise UserError(f"--verify: tensor {name} in {out} differs from the checkpoint's")


def probe_ids(vocab_size: int, seed: int = 0) -> torch.Tensor:
    """Deterministic probe token ids (B, L)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (PROBE_ROWS, PROBE_LEN), generator=gen)


def _reference(weights: RoleWeights, expected: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    from dataclasses import replace

    from rlkit.ckpt.merge import build_model

    fp32 = {n: t.float() if t.is_floating_point() else t for n, t in expected.items()}
    model = build_model(replace(weights, tensors=fp32), dtype=torch.float32, device="cpu")
    with torch.no_grad():
        out: torch.Tensor = model(ids, torch.ones_like(ids))
    return out.float()


def _transformers(out: Path, is_value_model: bool, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    auto = AutoModelForTokenClassification if is_value_model else AutoModelForCausalLM
    hf_logging.disable_progress_bar()
    try:
        model = auto.from_pretrained(str(out), dtype=torch.float32, use_safetensors=True).eval()
    except Exception as exc:  # transformers raises many types for a folder it cannot read
        raise UserError(f"--verify: transformers cannot load the merged folder {out}: {exc}") from exc
    finally:
        hf_logging.enable_progress_bar()
    with torch.no_grad():
        logits: torch.Tensor = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
    return logits.squeeze(-1) if is_value_model else logits


def verify_merged(out: Path, weights: RoleWeights, dtype: torch.dtype | None) -> float:
    """Check a merged folder against the checkpoint's weights; returns the largest probe-logit difference.

    Raises:
        UserError: A tensor differs, or the logits differ beyond ``RTOL`` of their scale.
    """
    expected = _expected(weights, dtype)
    check_tensors(out, expected)
    ids = probe_ids(int(weights.hf_config["vocab_size"]))
    ref = _reference(weights, expected, ids)
    got = _transformers(out, weights.is_value_model, ids)
    if got.shape != ref.shape:
        raise UserError(
            f"--verify: transformers gives outputs of shape {tuple(got.shape)}, rlkit {tuple(ref.shape)}"
        )
    diff = float((got - ref).abs().max())
    tol = RTOL * max(1.0, float(ref.abs().max()))
    if not diff <= tol:
        raise UserError(
            f"--verify: logits of the merged model in {out} differ from the checkpoint's by {diff:.3g} "
            f"(tolerance {tol:.3g})",
            hint="the folder does not reproduce the checkpoint; report this with `rlkit doctor` output",
        )
    return diff
