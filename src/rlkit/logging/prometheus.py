"""Live metrics for Prometheus: ``trainer.loggers=[...,prometheus]`` serves every step's metrics.

The backend starts the standard client library's HTTP server on ``trainer.prometheus_host`` /
``trainer.prometheus_port`` (loopback by default) and sets one gauge per metric after each step:
``reward/mean`` becomes ``rlkit_reward_mean``, ``timing/gen_s`` ``rlkit_timing_gen_s``,
``rollout/engine/sequences`` ``rlkit_rollout_engine_sequences``. Every series has a ``run`` label
(the run folder's name) and ``rlkit_step`` is the last step logged. The server stops when the run ends.

Live gauges: the rollout engines' own (``rlkit_rollout_engine_running_seqs``, ``_waiting_seqs``,
``_kv_cache_used_fraction``, ``_tokens_per_s``) are not step metrics: each scrape asks the rollout
workers for them (:class:`LiveGauges`, through the ``live`` callable), so they move while a rollout
runs. The engines live in Ray actors; the endpoint stays in the driver, one port for the whole run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

from rlkit.errors import UserError

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(key: str) -> str:
    """The Prometheus name of a metric key: ``reward/mean`` -> ``rlkit_reward_mean``."""
    return "rlkit_" + _UNSAFE.sub("_", key).strip("_")


class PrometheusBackend:
    """Serves the latest value of every numeric metric on ``http://HOST:PORT/metrics``."""

    def __init__(
        self, *, port: int, host: str, run: str, live: Callable[[], dict[str, float]] | None = None
    ) -> None:
        try:
            import prometheus_client
        except ImportError as exc:
            raise UserError(
                "trainer.loggers has prometheus but prometheus-client is not installed",
                hint="pip install 'rlkit[prometheus]' (or pip install prometheus-client)",
            ) from exc
        self._client = prometheus_client
        self.registry = prometheus_client.CollectorRegistry()
        self.run = run
        self._gauges: dict[str, Any] = {}
        if live is not None:
            self.registry.register(LiveGauges(live, run, owned=self._gauges))
        try:
            started = prometheus_client.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise UserError(
                f"trainer.prometheus_port={port}: cannot serve metrics on {host}:{port} ({exc.strerror})",
                hint="choose a free port (trainer.prometheus_port=...), or 0 for any free port",
            ) from exc
        self._server, self._thread = started if isinstance(started, tuple) else (None, None)
        self.port = self._server.server_port if self._server is not None else port
        self._gauge("step", "Last step logged.")

    def _gauge(self, key: str, doc: str | None = None) -> Any:
        name = metric_name(key)
        gauge = self._gauges.get(name)
        if gauge is None:
            gauge = self._client.Gauge(name, doc or f"rlkit metric {key}", ["run"], registry=self.registry)
            self._gauges[name] = gauge
        return gauge

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if hasattr(value, "item"):
                value = value.item()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._gauge(key).labels(run=self.run).set(float(value))
        self._gauge("step").labels(run=self.run).set(step)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class LiveGauges:
    """A collector that reads ``live()`` at every scrape: ``{metric key: value}`` as gauges.

    A failing read (the workers are shutting down) gives no live series for that scrape rather
    than an error page: the step metrics are still served. A key that is also a step metric is
    left to the step gauge.
    """

    def __init__(self, live: Callable[[], dict[str, float]], run: str, owned: dict[str, Any]) -> None:
        self.live, self.run, self.owned = live, run, owned

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration: the names are known only at a scrape

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            values = self.live()
        except Exception:
            return
        for key, value in values.items():
            name = metric_name(key)
            if name in self.owned or not math.isfinite(value):
                continue
            family = GaugeMetricFamily(name, f"rlkit live gauge {key}", labels=["run"])
            family.add_metric([self.run], float(value))
            yield family
