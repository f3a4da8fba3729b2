"""The prometheus logger serves each step's metrics on loopback with the standard client library."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from rlkit.errors import UserError
from rlkit.logging import MetricsLogger
from rlkit.logging.prometheus import metric_name

pytest.importorskip("prometheus_client", reason="the prometheus extra: pip install 'rlkit[prometheus]'")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_names() -> None:
    assert metric_name("reward/mean") == "rlkit_reward_mean"
    assert metric_name("rollout/engine/kv-cache usage") == "rlkit_rollout_engine_kv_cache_usage"


def test_serves_the_latest_step_then_stops(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path / "run7", ["prometheus"], total_steps=3, prometheus_port=0)
    (backend,) = logger.backends
    port = backend.port  # type: ignore[attr-defined]
    logger.log(1, {"reward/mean": 0.25, "timing/gen_s": 1.5, "note": "text is skipped", "nan": float("nan")})
    logger.log(2, {"reward/mean": 0.75})
    text = _scrape(port)
    assert 'rlkit_reward_mean{run="run7"} 0.75' in text
    assert 'rlkit_timing_gen_s{run="run7"} 1.5' in text and 'rlkit_step{run="run7"} 2.0' in text
    assert "rlkit_note" not in text and "rlkit_nan" not in text
    logger.close()
    with pytest.raises(OSError):
        _scrape(port)


def test_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"trainer.prometheus_port={port}"):
            MetricsLogger(tmp_path, ["prometheus"], total_steps=1, prometheus_port=port)


def test_grafana_dashboard_queries_metrics_rlkit_serves() -> None:
    import json
    import re

    root = Path(__file__).resolve().parents[3]
    dashboard = json.loads((root / "docs" / "grafana" / "rlkit-dashboard.json").read_text())
    served = {
        metric_name(k)
        for k in (
            "reward/mean",
            "val/reward/mean",
            "response_length/mean",
            "response_length/max",
            "throughput/tokens_per_s",
            "throughput/gen_tokens_per_s",
            "actor/entropy",
            "actor/grad_norm",
            "actor/ppo_kl",
            "actor/kl_loss",
            "rollout/logprob_gap_abs",
            "timing/step_s",
            "timing/gen_s",
            "timing/old_log_prob_s",
            "timing/update_actor_s",
            "timing/sync_s",
            "step",
            "rollout/engine/sequences",
            "throughput/rollout_engine_tokens_per_s",
        )
    }
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {re.match(r"(\w+)\{", e).group(1) for e in exprs}  # type: ignore[union-attr]
    unknown = {n for n in names if n not in served and not n.startswith("rlkit_rollout_engine_")}
    assert not unknown, unknown
    assert all('run=~"$run"' in e for e in exprs)
