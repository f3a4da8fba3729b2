"""``rlkit generate``: batch generation from a prompts file with a rollout engine (``--engine``), to jsonl.

Input: jsonl with ``prompt`` (text) or ``messages`` (a chat: a list of ``{"role", "content"}``) on
each line, or a verl-schema parquet file whose ``prompt`` column holds a chat (or text). The
tokenizer's chat template renders each prompt with the generation prompt appended, unless
``chat_template=False`` (then the raw text, or the chat's contents joined by newlines).

Output: one jsonl row per prompt, in input order: ``{"prompt", "responses", "token_ids",
"logprobs", "finish_reasons"}`` where ``prompt`` is the input as given (text or chat). The file is
written to a temporary name beside the target and renamed at the end, so an interrupted run
leaves no partial output.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rlkit import hardware
from rlkit.errors import UserError
from rlkit.rollout.base import RolloutEngine, SamplingParams
from rlkit.rollout.registry import (
    build_engine,
    build_engine_from_path,
    loads_checkpoint,
    resolve_engine,
)

Prompt = str | list[dict[str, Any]]


@dataclass
class GenerateSummary:
    """What a finished ``rlkit generate`` run produced."""

    out: Path
    prompts: int
    completions: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def read_prompts(path: Path) -> list[Prompt]:
    """Prompts of a jsonl or parquet file: a string (``prompt``) or a chat (``messages``) each.

    Raises:
        UserError: a missing file, an unknown extension, a line that is not a JSON object (with its
            number), a row with neither ``prompt`` nor ``messages``, a malformed chat, no prompts.
    """
    if not path.is_file():
        raise UserError(
            f"--prompts: no such file {str(path)!r}", hint="pass a .jsonl or .parquet file of prompts"
        )
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        prompts = _read_jsonl(path)
    elif suffix == ".parquet":
        prompts = _read_parquet(path)
    else:
        raise UserError(
            f"--prompts: cannot read {path.name!r}",
            hint="use .jsonl (prompt or messages per line) or .parquet",
        )
    if not prompts:
        raise UserError(f"--prompts: {str(path)!r} holds no prompts")
    return prompts


def _read_jsonl(path: Path) -> list[Prompt]:
    prompts: list[Prompt] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{where}: not valid JSON ({exc.msg})", hint="one JSON object per line"
                ) from exc
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if "messages" in row:
                prompts.append(_check_chat(row["messages"], where))
            elif "prompt" in row:
                prompts.append(_check_prompt(row["prompt"], where))
            else:
                raise UserError(
                    f"{where}: the row has neither 'prompt' nor 'messages'",
                    hint='write {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}',
                )
    return prompts


def _read_parquet(path: Path) -> list[Prompt]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise UserError(f"--prompts: cannot read parquet {str(path)!r}: {exc}") from exc
    if "prompt" not in table.column_names:
        raise UserError(
            f"--prompts: {path.name} has no 'prompt' column (columns: {', '.join(table.column_names)})",
            hint="use verl's schema: a 'prompt' column holding a list of chat messages",
        )
    return [
        _check_prompt(value, f"{path.name} row {i}")
        for i, value in enumerate(table.column("prompt").to_pylist())
    ]


def _check_prompt(value: Any, where: str) -> Prompt:
    if isinstance(value, str):
        return value
    return _check_chat(value, where)


def _check_chat(value: Any, where: str) -> list[dict[str, Any]]:
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    )
    if not ok or not value:
        raise UserError(
            f"{where}: a chat must be a non-empty list of {{'role': ..., 'content': ...}} messages",
            hint='e.g. [{"role": "user", "content": "What is 2 + 2?"}]',
        )
    return cast(list[dict[str, Any]], value)


def encode_prompts(prompts: list[Prompt], tokenizer: Any, *, chat_template: bool | None) -> list[list[int]]:
    """Token ids of each prompt, through the chat template (with the generation prompt) or raw.

    ``chat_template=None`` uses the template when the tokenizer has one.

    Raises:
        UserError: the tokenizer has no chat template, or a prompt encodes to no tokens.
    """
    if chat_template is None:
        chat_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "the model's tokenizer has no chat template", hint="pass --no-chat-template to use the raw text"
        )
    ids: list[list[int]] = []
    for i, prompt in enumerate(prompts):
        if chat_template:
            chat = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
            encoded = tokenizer(text)["input_ids"]
        if not encoded:
            raise UserError(f"prompt {i + 1} is empty after tokenization")
        ids.append(list(encoded))
    return ids


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the accelerator if there is one, else CPU; ``cuda`` without a GPU is a UserError."""
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device: unknown device {name!r}", hint="use auto, cpu or cuda")
    kind = hardware.device_type()
    if name == "cuda" and kind not in ("cuda", "rocm"):
        raise UserError("--device cuda: no CUDA device is visible", hint="use --device cpu or auto")
    if name == "cpu" or kind == "cpu":
        return torch.device("cpu")
    return torch.device(hardware.torch_device_name())


def resolve_model(path: str) -> str:
    """The folder to load for MODEL_OR_CKPT: a Hugging Face model folder, ``builtin:*``, or an rlkit
    checkpoint folder (``RUN/checkpoints/step_N``, read in memory as ``rlkit ckpt merge`` reads it).
    """
    if path.startswith("builtin:"):
        return path
    from rlkit.ckpt import checkpoints_dir, is_checkpoint_dir, newest_complete

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"no such model folder {path!r}",
            hint="pass a Hugging Face model folder, a checkpoint (RUN/checkpoints/step_N) or builtin:tiny",
        )
    if is_checkpoint_dir(folder):
        return str(folder)
    if not (folder / "config.json").is_file():
        newest = newest_complete(checkpoints_dir(folder)) or newest_complete(folder)
        hint = "pass a Hugging Face model folder or an rlkit checkpoint folder (RUN/checkpoints/step_N)"
        if newest is not None:
            hint = f"this looks like a run folder; pass one of its checkpoints, e.g. {newest.path}"
        raise UserError(f"{path!r} is not a Hugging Face model folder (no config.json)", hint=hint)
    return str(folder)


def load_model_tokenizer(path: str) -> Any:
    """The tokenizer of a resolved model folder or checkpoint folder."""
    from rlkit.ckpt import is_checkpoint_dir, load_checkpoint_tokenizer
    from rlkit.models import load_tokenizer

    return load_checkpoint_tokenizer(path) if is_checkpoint_dir(path) else load_tokenizer(path)


def load_engine(
    path: str,
    tokenizer: Any,
    device: torch.device,
    max_num_seqs: int,
    engine: str = "auto",
    *,
    max_model_len: int | None = None,
    options: dict[str, Any] | None = None,
) -> RolloutEngine:
    """The rollout engine ``engine`` (``auto``: native for its family, else hf) over a resolved model
    or checkpoint folder (bf16 on GPU, fp32 on CPU).

    Engines that load the folder themselves (``vllm``, ``server``) need a Hugging Face folder or a
    built-in model (exported to a temporary folder for them) and get ``max_model_len`` (longest prompt + completion) and ``options`` (e.g. a server's ``url``).

    Raises:
        UserError: ``engine`` cannot run this model (the message names the engines that can), or
            a vLLM engine is given an rlkit checkpoint folder.
    """
    from rlkit.ckpt import is_checkpoint_dir, load_checkpoint_model
    from rlkit.models import load_causal_lm, load_hf_config

    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    if engine != "auto" and loads_checkpoint(engine):
        if is_checkpoint_dir(path):
            raise UserError(
                f"--engine {engine} loads a Hugging Face folder and {path} is an rlkit checkpoint",
                hint=f"merge it first: rlkit ckpt merge {path} --out HF_DIR",
            )
        name = resolve_engine(engine, load_hf_config(path), options or {})
        return build_engine_from_path(
            name,
            path,
            dtype=dtype,
            device=device,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            options=options,
            cuda_graphs=device.type == "cuda",
        )
    if is_checkpoint_dir(path):
        model = load_checkpoint_model(path, dtype=dtype, device=device)
        name = resolve_engine(engine, _hf_config_dict(model))
    else:
        name = resolve_engine(engine, load_hf_config(path))  # before the weights are read
        model = load_causal_lm(path, dtype=dtype, device=device)
    return build_engine(name, model, device=device, max_num_seqs=max_num_seqs, tokenizer=tokenizer)


def _hf_config_dict(model: Any) -> dict[str, Any]:
    """The ``config.json`` dict of a loaded native or transformers-fallback model."""
    to_dict = getattr(model, "hf_config_dict", None)
    return dict(to_dict()) if to_dict is not None else dict(model.config.to_hf())


def sampling_params(**kwargs: Any) -> SamplingParams:
    """``SamplingParams`` from command-line values; a bad value is a UserError."""
    try:
        return SamplingParams(**kwargs)
    except ValueError as exc:
        raise UserError(str(exc).replace("SamplingParams.", "--").replace("_", "-")) from exc


def run_generate(
    model: str,
    prompts_file: Path,
    out: Path,
    *,
    params: SamplingParams,
    chat_template: bool | None = None,
    device: str = "auto",
    batch_size: int = 256,
    console: Console | None = None,
    engine: str = "auto",
    server_url: str | None = None,
) -> GenerateSummary:
    """Generate ``params.n`` completions per prompt of ``prompts_file`` into ``out`` (jsonl, atomic).

    Prompts go to the engine ``batch_size`` at a time (continuous batching inside each call); a
    progress bar shows completions and tokens per second. ``server_url``: the server of
    ``engine="server"`` (None: rlkit starts one, logging into a temporary folder).
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    console = console or Console(stderr=True)
    prompts = read_prompts(prompts_file)
    dev = resolve_device(device)
    path = resolve_model(model)
    tokenizer = load_model_tokenizer(path)
    token_ids = encode_prompts(prompts, tokenizer, chat_template=chat_template)  # fail before loading weights
    rollout = load_engine(
        path,
        tokenizer,
        dev,
        max_num_seqs=min(256, batch_size * params.n),
        engine=engine,
        max_model_len=max(len(ids) for ids in token_ids) + params.max_tokens + 1 if token_ids else None,
        options={"url": server_url} if server_url else None,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    start, tokens = time.perf_counter(), 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f, _progress(console) as bar:
            task = bar.add_task("generating", total=len(prompts) * params.n, tps="")
            for lo in range(0, len(prompts), batch_size):
                done_before, tokens_before = lo * params.n, tokens

                def report(
                    finished: int, generated: int, base: int = done_before, t0: int = tokens_before
                ) -> None:
                    rate = (t0 + generated) / max(time.perf_counter() - start, 1e-9)
                    bar.update(task, completed=base + finished, tps=f"{rate:,.0f} tok/s")

                groups = rollout.generate(token_ids[lo : lo + batch_size], params, progress=report)
                for prompt, group in zip(prompts[lo : lo + batch_size], groups, strict=True):
                    tokens += sum(len(c.token_ids) for c in group)
                    f.write(json.dumps(_row(prompt, group, tokenizer), ensure_ascii=False) + "\n")
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    finally:
        rollout.close()
    return GenerateSummary(out, len(prompts), len(prompts) * params.n, tokens, time.perf_counter() - start)


def _row(prompt: Prompt, group: list[Any], tokenizer: Any) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "responses": [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in group],
        "token_ids": [c.token_ids for c in group],
        "logprobs": [c.logprobs for c in group],
        "finish_reasons": [c.finish_reason for c in group],
    }


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tps]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
