"""Multi-turn rollouts: agent loops, tools and interactions (issue #21).

Layering: ``controller`` -> ``agents`` -> ``rollout``. Agent loops drive a rollout engine turn by
turn; tools run outside the trainer process wherever they execute model output.
"""
