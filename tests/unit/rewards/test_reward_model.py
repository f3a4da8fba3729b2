"""RewardModelScorer over tiny random sequence-classification models built in-process.

Llama rather than Qwen2: transformers 5 forces ``Qwen2Tokenizer`` (vocab + merges) onto any folder
whose config says qwen2, which would replace the tiny word-level tokenizer built here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from rlkit.errors import UserError
from rlkit.rewards.managers import build_reward_manager
from rlkit.rewards.reward_model import RewardModelScorer

WORDS = "the a cat dog sat on mat is good bad answer question what why 1 2 3 4 5 user assistant : ok".split()
PROMPTS = ["what is the answer", "why", "the cat sat on the mat what", "question 1 2"]
RESPONSES = ["the answer is 4", "good", "ok", "3 4 5 1 2 3 4 5 the dog sat"]


def make_tokenizer(pad_is_eos: bool) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    pad = "<eos>" if pad_is_eos else "<pad>"
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=pad, eos_token="<eos>", unk_token="<unk>"
    )


def save_llama(
    folder: Path, *, num_labels: int = 1, pad_is_eos: bool = False, template: str | None = None
) -> Path:
    torch.manual_seed(0)
    tokenizer = make_tokenizer(pad_is_eos)
    if template:
        tokenizer.chat_template = template
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_llama(tmp_path_factory.mktemp("rm_llama"))


def reference_scores(scorer: RewardModelScorer, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """The model's own forward, one unpadded sequence at a time, read at the last token."""
    scorer.model.config.pad_token_id = None  # batch of one: transformers reads position -1
    out = []
    with torch.no_grad():
        for prompt, response in zip(prompts, responses, strict=True):
            ids = torch.tensor([scorer.tokenizer(prompt + response)["input_ids"]])
            out.append(scorer.model(input_ids=ids).logits[0, 0])
    return torch.stack(out)


def test_shapes_determinism_and_batch_invariance(llama_path: Path) -> None:
    scorer = RewardModelScorer(llama_path, max_length=64)
    scores = scorer.score(PROMPTS, RESPONSES, batch_size=3)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    assert torch.equal(scores, scorer.score(PROMPTS, RESPONSES, batch_size=3))
    torch.testing.assert_close(scores, scorer.score(PROMPTS, RESPONSES, batch_size=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores, reference_scores(scorer, PROMPTS, RESPONSES), atol=1e-5, rtol=1e-5)
    assert scorer.score([], [], batch_size=2).shape == (0,)


def test_pad_equal_to_eos_reads_the_real_last_token(tmp_path: Path) -> None:
    scorer = RewardModelScorer(save_llama(tmp_path, pad_is_eos=True))
    responses = [r + " <eos>" for r in RESPONSES]  # the end token counts, even though it is also the pad
    scores = scorer.score(PROMPTS, responses, batch_size=4)
    torch.testing.assert_close(scores, reference_scores(scorer, PROMPTS, responses), atol=1e-5, rtol=1e-5)


def test_chat_template_is_applied(tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
    scorer = RewardModelScorer(save_llama(tmp_path, template=template))
    assert scorer.format_pair("why", "ok").split() == [
        "user",
        ":",
        "why",
        "<eos>",
        "assistant",
        ":",
        "ok",
        "<eos>",
    ]
    plain = RewardModelScorer(save_llama(tmp_path / "plain"))
    assert plain.format_pair("why ", "ok") == "why ok"
    assert scorer.score(PROMPTS, RESPONSES).shape == (4,)


def test_truncation_keeps_the_end(llama_path: Path) -> None:
    scorer = RewardModelScorer(llama_path, max_length=4)
    long_prompt = "the cat sat on the mat " * 50
    full = scorer.score([long_prompt], ["the answer is 4"])
    tail = scorer.score([""], ["the answer is 4"])
    torch.testing.assert_close(full, tail)


def test_encoder_reward_model(tmp_path: Path) -> None:
    tokenizer = make_tokenizer(pad_is_eos=False)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    scorer = RewardModelScorer(tmp_path)
    assert scorer._decoder_head is None
    scores = scorer.score(PROMPTS, RESPONSES, batch_size=4)
    torch.testing.assert_close(scores, scorer.score(PROMPTS, RESPONSES, batch_size=1), atol=1e-5, rtol=1e-5)


def test_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="labels, expected 1"):
        RewardModelScorer(save_llama(tmp_path / "two", num_labels=2))
    with pytest.raises(UserError, match="cannot load"):
        RewardModelScorer(tmp_path / "missing")


class _Touch:
    """Unpickling this creates ``marker``: what a hostile pytorch_model.bin can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_refused_unread(tmp_path: Path) -> None:
    folder = save_llama(tmp_path / "bin")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"weights": _Touch(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(
        UserError, match=r"only pickled PyTorch weights \(pytorch_model.bin\).*safetensors only"
    ):
        RewardModelScorer(folder)
    with pytest.raises(UserError, match="only pickled PyTorch weights"):  # before any worker starts
        build_reward_manager(reward_model_path=str(folder))
    assert not marker.exists()
