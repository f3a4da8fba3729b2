"""The pieces behind the engines' gauges: recent rates on a controlled clock, vLLM's metric page."""

from __future__ import annotations

import pytest

from rlkit.rollout import EngineGauges
from rlkit.rollout.gauges import CounterRate, TokenRate, parse_vllm_metrics, vllm_gauges
from rlkit.trainer.stats import merge_rank_gauges


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_token_rate_covers_the_last_window(clock: Clock) -> None:
    rate = TokenRate(window_s=2.0, clock=clock)
    assert rate.per_s() == 0.0
    rate.add(30)
    clock.now += 1.0
    rate.add(10)
    assert rate.per_s() == 20.0  # 40 tokens in the last 2 s
    clock.now += 1.5  # the first 30 are older than the window now
    assert rate.per_s() == 5.0
    clock.now += 1.0
    assert rate.per_s() == 0.0  # idle for a whole window


def test_counter_rate_compares_with_a_reading_a_window_old(clock: Clock) -> None:
    rate = CounterRate(window_s=2.0, clock=clock)
    assert rate.per_s(1000.0) == 0.0  # nothing to compare with yet
    clock.now += 1.0
    assert rate.per_s(1100.0) == 100.0
    clock.now += 1.0
    assert rate.per_s(1300.0) == 150.0  # 300 tokens over 2 s
    clock.now += 1.0
    assert rate.per_s(1300.0) == 100.0  # vs the reading 2 s ago (1100)
    clock.now += 10.0
    assert rate.per_s(1300.0) == 0.0
    clock.now += 1.0
    assert rate.per_s(5.0) == 0.0  # a counter that restarted is no negative rate


VLLM_PAGE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="rlkit"} 7.0
vllm:num_requests_waiting{engine="0",model_name="rlkit"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="rlkit"} 0.25
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="rlkit"} 1200.0
vllm:generation_tokens_created{engine="0",model_name="rlkit"} 1.7e9
python_gc_objects_collected_total{generation="0"} 5.0
"""


def test_a_vllm_metrics_page_becomes_gauges(clock: Clock) -> None:
    values = parse_vllm_metrics(VLLM_PAGE)
    assert values["vllm:num_requests_running"] == 7.0 and values["vllm:generation_tokens"] == 1200.0
    assert not any(name.startswith("python") for name in values)
    rate = CounterRate(clock=clock)
    first = vllm_gauges(values, rate)
    assert first == EngineGauges(running=7, waiting=2, kv_cache_used_fraction=0.25, tokens_per_s=0.0)
    clock.now += 2.0
    later = vllm_gauges(parse_vllm_metrics(VLLM_PAGE.replace("1200.0", "1500.0")), rate)
    assert later.tokens_per_s == 150.0
    assert vllm_gauges({}, CounterRate()) == EngineGauges()  # a server without vLLM's metrics


def test_ranks_sum_counts_and_average_fractions() -> None:
    per_rank = [
        EngineGauges(running=3, waiting=1, kv_cache_used_fraction=0.5, tokens_per_s=10.0).as_metrics(),
        EngineGauges(running=1, waiting=0, kv_cache_used_fraction=0.25, tokens_per_s=30.0).as_metrics(),
        None,  # a rank that did not answer the probe
    ]
    assert merge_rank_gauges(per_rank) == {
        "running_seqs": 4.0,
        "waiting_seqs": 1.0,
        "kv_cache_used_fraction": 0.375,
        "tokens_per_s": 40.0,
    }
    assert EngineGauges(running=2).as_metrics() == {"running_seqs": 2.0}  # unknown gauges left out
