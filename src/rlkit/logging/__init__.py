"""Run logging: rich console, metrics.jsonl, TensorBoard, Weights & Biases, and PNG plots."""

from rlkit.logging.metrics import MetricsLogger, read_metrics

__all__ = ["MetricsLogger", "read_metrics"]
