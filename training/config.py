"""Training parameters (the ``[training]`` section of fleetscore.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingConfig:
    """Feature set and hyperparameters of the per-(device, sensor) models. See docs/training.md."""

    model_name: str = "fleetscore-anomaly"
    features: tuple[str, ...] = ("value",)
    nu: float = 0.01
    gamma: float | str = "scale"
    min_rows: int = 50
    rolling_window: int = 6
