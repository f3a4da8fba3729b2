"""The prometheus logger serves each step's metrics on loopback with the standard client library."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from rlkit.errors import UserError
from rlkit.logging import MetricsLogger
from rlkit.logging.prometheus import metric_name
from rlkit.rollout import EngineGauges

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


def test_live_gauges_are_read_at_every_scrape(tmp_path: Path) -> None:
    """The engine gauges come from the live callable when scraped, not from the last step; a read
    that fails leaves them out and the step metrics still come."""
    readings = iter([{"rollout/engine/running_seqs": 3.0}, {"rollout/engine/running_seqs": 1.0}])

    def live() -> dict[str, float]:
        try:
            return next(readings)
        except StopIteration:
            raise RuntimeError("the workers are gone") from None

    logger = MetricsLogger(
        tmp_path / "run8", ["prometheus"], total_steps=1, prometheus_port=0, live_gauges=live
    )
    port = logger.backends[0].port  # type: ignore[attr-defined]
    logger.log(1, {"reward/mean": 0.5})
    try:
        assert 'rlkit_rollout_engine_running_seqs{run="run8"} 3.0' in _scrape(port)
        assert 'rlkit_rollout_engine_running_seqs{run="run8"} 1.0' in _scrape(port)
        text = _scrape(port)
        assert "rlkit_rollout_engine_running_seqs" not in text and 'rlkit_reward_mean{run="run8"} 0.5' in text
    finally:
        logger.close()


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
            "rollout/engine/tokens",
            "throughput/rollout_engine_tokens_per_s",
            # the live engine gauges, by the names every engine's gauges() gives them
            *(f"rollout/engine/{name}" for name in EngineGauges(0, 0, 0.0, 0.0).as_metrics()),
        )
    }
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {re.match(r"(\w+)\{", e).group(1) for e in exprs}  # type: ignore[union-attr]
    unknown = names - served
    assert not unknown, unknown
    assert all('run=~"$run"' in e for e in exprs)
