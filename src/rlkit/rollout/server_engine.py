"""The ``server`` rollout engine: an OpenAI-compatible ``/v1/completions`` server, and its lifecycle.

:class:`ServerEngine` sends token-id prompts to ``/v1/completions`` (one request per prompt, a few
in flight) and reads back token ids (``return_token_ids``) and the log-prob of each sampled token.
The server is either one rlkit starts on the loopback address (:class:`VllmServer`: started,
waited for, and always stopped by rlkit) or one the user points at with a URL.

Weights go through the server's own routes (vLLM with ``VLLM_SERVER_DEV_MODE=1`` and rlkit's
worker extension): ``/pause``, ``/collective_rpc`` (``rlkit_load_file`` of a safetensors file the
server can read: same host or a shared file system), ``/reset_prefix_cache``, ``/resume``; then
``rlkit_load_file`` returns the worker's receipt (the sums of every tensor as vLLM's loader took
it, what loaded nothing, what was left out) and ``/collective_rpc`` ``rlkit_checksums`` reads back
the parameters vLLM keeps in their Hugging Face layout.

SGLang's server is not supported (it cannot run here); it would need ``/generate`` with
``input_ids`` and ``return_logprob``, ``/update_weights_from_disk`` (or
``/update_weights_from_tensor``), ``/flush_cache`` and ``/release_memory_occupation`` /
``/resume_memory_occupation`` behind the same interface.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from rlkit.errors import UserError
from rlkit.rollout.base import Completion, EngineGauges, FinishReason, ProgressFn, SamplingParams
from rlkit.rollout.gauges import CounterRate, parse_vllm_metrics, vllm_gauges
from rlkit.rollout.guard import guarded_popen
from rlkit.rollout.vllm_engine import (
    EXTENSION,
    INSTALL_HINT,
    cpu_head_size_reason,
    model_len,
    repeat_greedy,
    sampling_kwargs,
    split_logprobs,
    vllm_version,
)
from rlkit.rollout.weight_sync import (
    Checksums,
    Receipt,
    VersionedWeights,
    WeightLedger,
    checksum_names,
    land_push,
    tensor_checksums,
)

# Seconds a stopped server gets to exit after SIGTERM before it is killed.
STOP_GRACE_S = 20.0
# Deadline of one read of the server's /metrics page (gauges are read while a scrape waits).
METRICS_TIMEOUT_S = 2.0


def free_port() -> int:
    """A TCP port free on the loopback address right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's whole process group, SIGKILL what is left after :data:`STOP_GRACE_S`.

    The group, not only the server: vLLM's engine-core process is the server's child and can
    outlive it by seconds.
    """
    pgid = proc.pid
    _signal_group(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        _signal_group(pgid, signal.SIGKILL)
        proc.wait(timeout=STOP_GRACE_S)
    deadline = time.monotonic() + STOP_GRACE_S
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
        while group_alive(pgid) and time.monotonic() < deadline + STOP_GRACE_S:
            time.sleep(0.1)
    if proc.stdin is not None:
        proc.stdin.close()


class VllmServer:
    """A vLLM OpenAI-compatible server rlkit starts on 127.0.0.1 and stops (never left running).

    Args:
        model_path: A Hugging Face folder.
        port: TCP port (default: a free one).
        dtype: ``--dtype``.
        max_model_len: ``--max-model-len``.
        kv_cache_gib: CPU only: ``VLLM_CPU_KVCACHE_SPACE`` (GiB).
        startup_timeout_s: Seconds to wait for ``/health``; past it, a :class:`UserError`.
        log_path: Where the server's output goes (default: a file in a temporary folder).
        extra_args: More command-line arguments for the server.
    """

    def __init__(
        self,
        model_path: str,
        *,
        port: int | None = None,
        dtype: str = "auto",
        max_model_len: int = 4096,
        kv_cache_gib: int = 1,
        startup_timeout_s: float = 600.0,
        log_path: str | Path | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = Path(tempfile.mkdtemp(prefix="rlkit-vllm-server-"))
        self.log_path = Path(log_path) if log_path else self._tmp / "server.log"
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--dtype", dtype]
        cmd += ["--max-model-len", str(max_model_len), "--served-model-name", "rlkit"]
        cmd += ["--worker-extension-cls", EXTENSION, "--logprobs-mode", "processed_logprobs"]
        cmd += extra_args or []
        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib)))
        with open(self.log_path, "wb") as log:
            # under rlkit's launcher, in its own session: stop() ends the engine processes the
            # server spawns as well, and the launcher stops them all when this process dies (kill -9 too)
            self.proc = guarded_popen(cmd, stdout=log, env=env)
        # stopped at interpreter exit, or when this object is collected, whichever comes first
        self._finalizer = weakref.finalize(self, _kill_group, self.proc)
        self.wait_ready(startup_timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``/health`` until it answers 200.

        Raises:
            UserError: the server exited or did not get ready in ``timeout_s`` (it is stopped).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise UserError(
                    f"the vLLM server exited with code {self.proc.returncode} while starting: {self.log_tail()}",
                    hint=f"see its log {self.log_path}",
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise UserError(
            f"the vLLM server on {self.url} was not ready after {timeout_s:.0f} s: {self.log_tail()}",
            hint=f"raise the start-up timeout or see its log {self.log_path}",
        )

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of the server's log, on one line."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    @property
    def running(self) -> bool:
        """Whether the server or any process it started is still alive."""
        return self.proc.poll() is None or group_alive(self.proc.pid)

    def stop(self) -> None:
        """Stop the server and every process it started (idempotent)."""
        self._finalizer()


class ServerEngine(VersionedWeights):
    """A rollout engine over an OpenAI-compatible completions server.

    Args:
        base_url: The server, e.g. ``http://127.0.0.1:8000`` (no ``/v1``).
        model_name: The ``model`` field of requests (the server's served model name).
        tokenizer_path: Where the model's tokenizer is: it supplies the default stop tokens.
        request_timeout_s: Deadline of one HTTP request (a generation or a weight push).
        max_concurrency: Prompts in flight at once.
        server: A :class:`VllmServer` this engine owns: stopped by :meth:`close`.
        sleep_mode: The server was started with ``--enable-sleep-mode`` (GPU only): :meth:`sleep`
            calls ``/sleep``; otherwise it frees nothing.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model_name: str = "rlkit",
        tokenizer_path: str | None = None,
        request_timeout_s: float = 600.0,
        max_concurrency: int = 32,
        server: VllmServer | None = None,
        sleep_mode: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout_s = request_timeout_s
        self.max_concurrency = max_concurrency
        self.server = server
        self.sleep_mode = sleep_mode
        self.default_stop_ids: list[int] = []
        if tokenizer_path is not None:
            from rlkit.models import load_tokenizer, stop_token_ids

            self.default_stop_ids = stop_token_ids(load_tokenizer(tokenizer_path))
        self.ledger = WeightLedger()
        self._checked: list[str] | None = None
        self._asleep = False
        self._generated = CounterRate()

    loads_checkpoint = True

    @classmethod
    def launch(cls, model_path: str, **server_kwargs: Any) -> ServerEngine:
        """Start a :class:`VllmServer` on ``model_path`` and return an engine that owns it."""
        server = VllmServer(model_path, **server_kwargs)
        return cls(server.url, tokenizer_path=model_path, server=server)

    @staticmethod
    def version() -> str:
        """The local vllm's version (for a server rlkit starts); a server given by URL needs none."""
        return vllm_version() or "HTTP client only (no local vllm: give rollout.server.url)"

    @staticmethod
    def unsupported_reason(hf_config: dict[str, Any]) -> str | None:
        """None: what a server can run depends on where it runs (see :meth:`check_options`)."""
        return None

    @staticmethod
    def check_options(hf_config: dict[str, Any], options: dict[str, Any]) -> None:
        """A server rlkit starts (``url`` null) needs vllm here and, on a CPU, a head size >= 32.

        Raises:
            UserError: one of those does not hold.
        """
        if options.get("url"):
            return
        if vllm_version() is None:
            raise UserError(
                "rollout.engine=server with rollout.server.url=null starts a vLLM server here, "
                "and the vllm package is not installed",
                hint=f"{INSTALL_HINT}; or set rollout.server.url to a running server",
            )
        reason = cpu_head_size_reason(hf_config)
        if reason is not None:
            raise UserError(
                f"rollout.engine=server cannot start a vLLM server for this model ({reason})",
                hint="use rollout.engine=auto, native or hf, or rollout.server.url=<a server on a GPU>",
            )

    @classmethod
    def from_checkpoint(
        cls,
        model_path: str,
        *,
        dtype: str,
        max_model_len: int | None,
        log_dir: str | None = None,
        url: str | None = None,
        model_name: str = "rlkit",
        startup_timeout_s: float = 600.0,
        request_timeout_s: float = 600.0,
        max_concurrency: int = 32,
        kv_cache_gib: int = 1,
        **_common: Any,
    ) -> ServerEngine:
        """The engine from the registry's settings and the ``rollout.server`` keys.

        With ``url`` it talks to that server; without, it starts one on ``model_path`` (log in
        ``log_dir/vllm_server.log``) that :meth:`close` stops. The other common settings
        (``max_num_seqs``, ``gpu_memory_utilization``, ...) are the server's own business.
        """
        if url:
            return cls(
                url,
                model_name=model_name,
                tokenizer_path=model_path,
                request_timeout_s=request_timeout_s,
                max_concurrency=max_concurrency,
            )
        server = VllmServer(
            model_path,
            dtype=dtype,
            max_model_len=model_len(model_path, max_model_len),
            kv_cache_gib=kv_cache_gib,
            startup_timeout_s=startup_timeout_s,
            log_path=Path(log_dir) / "vllm_server.log" if log_dir else None,
        )
        return cls(
            server.url,
            tokenizer_path=model_path,
            request_timeout_s=request_timeout_s,
            max_concurrency=max_concurrency,
            server=server,
        )

    # ------------------------------------------------------------------ RolloutEngine

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        params: SamplingParams | list[SamplingParams],
        *,
        progress: ProgressFn | None = None,
    ) -> list[list[Completion]]:
        """Sample ``n`` completions per prompt through ``/v1/completions``."""
        if self._asleep:
            raise RuntimeError("the rollout engine is asleep: call wake() before generate()")
        per_prompt = params if isinstance(params, list) else [params] * len(prompt_token_ids)
        if len(per_prompt) != len(prompt_token_ids):
            raise ValueError(f"{len(per_prompt)} parameter sets for {len(prompt_token_ids)} prompts")
        if not prompt_token_ids:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompt_token_ids))) as pool:
            groups = list(pool.map(self._complete, prompt_token_ids, per_prompt))
        if progress is not None:
            progress(sum(len(g) for g in groups), sum(len(c.token_ids) for g in groups for c in g))
        return groups

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Write the tensors to a safetensors file, have the server load it, then check that it landed.

        Raises:
            WeightSyncError: a pushed name loaded nothing, a parameter was left out, or the
                server's read-back checksum does not match the pushed tensors (:func:`land_push`).
        """
        from safetensors.torch import save_file

        tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in named_tensors}
        if self._checked is None:
            self._checked = checksum_names(self._rpc("rlkit_param_names"))
        folder = Path(tempfile.mkdtemp(prefix="rlkit-push-"))
        try:
            path = folder / "weights.safetensors"
            save_file(tensors, str(path))
            self._post("/pause?mode=wait")
            try:
                receipt = Receipt.from_dict(self._rpc("rlkit_load_file", str(path)))
                self._post("/reset_prefix_cache")
            finally:
                self._post("/resume")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        land_push(self, tensor_checksums(tensors.items(), self._checked), receipt)

    def weights_checksum(self) -> Checksums:
        """The checksums of a few parameters, read back from the server's worker."""
        if self._checked is None:
            self._checked = checksum_names(self._rpc("rlkit_param_names"))
        checksums: Checksums = self._rpc("rlkit_checksums", json.dumps(self._checked))
        return checksums

    def sleep(self) -> None:
        if self.sleep_mode and not self._asleep:
            self._post("/sleep?level=1")
        self._asleep = True

    def wake(self) -> None:
        if self.sleep_mode and self._asleep:
            self._post("/wake_up")
        self._asleep = False

    def gauges(self) -> EngineGauges:
        """The server's own gauges from its Prometheus page (``GET /metrics``: vLLM's running and
        waiting requests, KV-cache use, generated-token counter); all None if it has none or does
        not answer within :data:`METRICS_TIMEOUT_S`. A server shared with other clients counts
        their requests too."""
        try:
            with urllib.request.urlopen(self.base_url + "/metrics", timeout=METRICS_TIMEOUT_S) as resp:
                text = resp.read().decode(errors="replace")
        except (urllib.error.URLError, TimeoutError, OSError):
            return EngineGauges()
        return vllm_gauges(parse_vllm_metrics(text), self._generated)

    def close(self) -> None:
        """Stop the server if this engine started it (a server given by URL is left alone)."""
        if self.server is not None:
            self.server.stop()

    # ------------------------------------------------------------------ HTTP

    def _complete(self, prompt: list[int], sp: SamplingParams) -> list[Completion]:
        body = {k: v for k, v in sampling_kwargs(sp, self.default_stop_ids).items() if v is not None}
        body |= {"model": self.model_name, "prompt": list(prompt), "return_token_ids": True}
        choices = sorted(self._post("/v1/completions", body)["choices"], key=lambda c: c["index"])
        out = []
        for choice in choices:
            processed = None
            if sp.logprobs and choice.get("logprobs"):
                processed = [float(x) for x in choice["logprobs"]["token_logprobs"]]
            logprobs, sampling = split_logprobs(processed, sp)
            reason: FinishReason = "length" if choice.get("finish_reason") == "length" else "stop"
            out.append(Completion(list(choice["token_ids"]), logprobs, sampling, reason))
        return repeat_greedy(out, sp)

    def _rpc(self, method: str, *args: str) -> Any:
        reply = self._post(
            "/collective_rpc", {"method": method, "args": list(args), "timeout": self.timeout_s}
        )
        return reply["results"][0]

    def _post(self, route: str, body: dict[str, Any] | None = None) -> Any:
        """POST JSON, return the decoded reply (None if empty).

        Raises:
            RuntimeError: the server answered an error, or did not answer within the deadline.
        """
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(
            self.base_url + route, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise RuntimeError(f"rollout server {self.base_url}{route}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise RuntimeError(
                f"rollout server {self.base_url}{route}: no answer within {self.timeout_s:.0f} s ({exc})"
            ) from exc
        return json.loads(raw) if raw else None
