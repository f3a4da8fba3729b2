"""Config: the dataclass schema (one source of truth) and its Hydra composition."""

from rlkit.config.schema import RlkitConfig

__all__ = ["RlkitConfig"]
