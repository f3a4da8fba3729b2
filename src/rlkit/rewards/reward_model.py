"""Score responses with a Hugging Face sequence-classification reward model (``reward.model_path``).

Any ``AutoModelForSequenceClassification`` checkpoint with one label works, in safetensors: pickled
``.bin`` weights are refused (loading them would unpickle the file). Decoder reward models
(Llama, Qwen2, ... with a ``score`` head) are read at the last real token, found from the
attention mask rather than from ``pad_token_id``, so a tokenizer whose pad token equals its EOS
(common) cannot shift the read position. Free of Ray: the trainer wraps it in a worker role.

Shape legend: ``B`` pairs, ``T`` tokens (padded), ``H`` hidden size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlkit.data.hub import resolve_model_path
from rlkit.errors import UserError

_PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def refuse_pickled_weights(folder: Path) -> None:
    """A local checkpoint with pickled weights (``.bin`` ...) but no safetensors is a UserError."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pattern in _PICKLED for p in folder.glob(pattern))
    if pickled:
        raise UserError(
            f"reward.model_path: {folder} has only pickled PyTorch weights ({pickled[0]}); "
            "rlkit loads reward models from safetensors only",
            hint="from a copy you trust, load it once and save it again with save_pretrained(), "
            "which writes model.safetensors",
        )


class RewardModelScorer:
    """A reward model and its tokenizer, scoring (prompt, response) pairs.

    Args:
        path: Folder (or hub id) of the checkpoint and tokenizer.
        device: Where the model runs.
        dtype: Parameter dtype.
        max_length: Longest input in tokens; longer inputs lose their beginning, so the end of the
            response, which the score is read at, is always kept.

    Raises:
        UserError: The checkpoint cannot be loaded, has only pickled (``.bin``) weights, or has more
            than one label.
    """

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int = 4096,
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        hint = "set reward.model_path to a sequence-classification checkpoint (num_labels=1)"
        path = resolve_model_path(path, key="reward.model_path")
        refuse_pickled_weights(Path(path))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            # safetensors only: a .bin file is a pickle, and unpickling runs whatever it says
            model = AutoModelForSequenceClassification.from_pretrained(
                str(path), dtype=dtype, use_safetensors=True
            )
        except (OSError, ValueError) as exc:
            raise UserError(
                f"reward.model_path: cannot load a reward model from {str(path)!r}: {exc}", hint=hint
            ) from exc
        if model.config.num_labels != 1:
            raise UserError(
                f"reward.model_path: {path} has {model.config.num_labels} labels, expected 1", hint=hint
            )
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.max_length = max_length
        head = getattr(model, "score", None)
        # Decoder classifiers pool the last token through `score`; encoders pool internally.
        is_decoder_head = isinstance(head, torch.nn.Linear) and model.base_model is not model
        self._decoder_head = head if is_decoder_head else None

    def format_pair(self, prompt: str, response: str) -> str:
        """The text scored for a pair: the chat template (user, assistant) if any, else ``prompt + response``."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False))
        return prompt + response

    def _encode(self, prompt: str, response: str) -> list[int]:
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        # A chat template already spells out its special tokens.
        ids = self.tokenizer(self.format_pair(prompt, response), add_special_tokens=not templated)[
            "input_ids"
        ]
        return list(ids[-self.max_length :]) or [self.tokenizer.eos_token_id or 0]

    @torch.inference_mode()
    def _score_batch(self, sequences: list[list[int]]) -> torch.Tensor:
        lengths = [len(ids) for ids in sequences]
        width = max(lengths)
        input_ids_BT = torch.zeros(len(sequences), width, dtype=torch.long)
        mask_BT = torch.zeros(len(sequences), width, dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids_BT[row, : len(ids)] = torch.tensor(ids)
            mask_BT[row, : len(ids)] = 1
        input_ids_BT, mask_BT = input_ids_BT.to(self.device), mask_BT.to(self.device)
        if self._decoder_head is None:
            logits_B1: torch.Tensor = self.model(input_ids=input_ids_BT, attention_mask=mask_BT).logits
            return logits_B1[:, 0].float().cpu()
        hidden_BTH = self.model.base_model(input_ids=input_ids_BT, attention_mask=mask_BT).last_hidden_state
        last_B = torch.tensor(lengths, device=self.device) - 1
        hidden_BH = hidden_BTH[torch.arange(len(sequences), device=self.device), last_B]
        scores_B1: torch.Tensor = self._decoder_head(hidden_BH)
        return scores_B1[:, 0].float().cpu()

    def score(self, prompts: list[str], responses: list[str], batch_size: int = 8) -> torch.Tensor:
        """Score each (prompt, response) pair.

        Args:
            prompts: Prompt texts.
            responses: Response texts, aligned with ``prompts``.
            batch_size: Pairs per forward pass (pairs are grouped by length to pad little).

        Returns:
            float32 scores on the CPU, in input order.

        Shape:
            Returns ``(B,)``.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sequences = [self._encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        scores_B = torch.zeros(len(sequences), dtype=torch.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            scores_B[rows] = self._score_batch([sequences[i] for i in rows])
        return scores_B
