"""rlkit: reinforcement-learning post-training for language models, from one CLI."""

__version__ = "0.1.0"
