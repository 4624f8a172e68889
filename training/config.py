"""Training parameters (the ``[training]`` section of fleetscore.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingConfig:
    """Feature set and hyperparameters of the per-(device, sensor) models. See docs/training.md."""

    model_name: str = "fleetscore-anomaly"
    # the detector family (training/detectors/): "ocsvm" (StandardScaler + OneClassSVM per series),
    # "robust" (per-feature median/MAD residuals per series) or "device" (robust z of every sensor of a
    # device combined per window); see docs/detection.md
    detector: str = "ocsvm"
    # robust: a window is an anomaly when a feature lies more than this many robust z away from its median
    robust_threshold: float = 6.0
    features: tuple[str, ...] = ("value", "log_spread", "recent_level", "recent_spread")
    # ocsvm: each series' threshold is the quantile of its cross-fitted calibration scores that flags this
    # share of its normal training windows (0: libsvm's own boundary, moved out by offset_margin)
    target_false_alarm_rate: float = 0.005
    nu: float = 0.02
    gamma: float | str = 0.2
    min_rows: int = 50
    # windows the recent_* features and rolling_std look back over (12: one minute of 5 s windows)
    rolling_window: int = 12
    # each model's offset (rho) moves out by this share of itself: a window is an anomaly when its kernel
    # score is below (1 - offset_margin) * rho; 0 keeps libsvm's own boundary (see docs/training.md)
    offset_margin: float = 0.1
    experiment: str = "fleetscore-training"
    # evaluation gate: a challenger passes when its false-alarm rate on the holdout is at most
    # max(champion's + gate_far_margin, gate_max_far) and its recall on injected anomalies is at least
    # the champion's - gate_recall_margin
    gate_holdout_fraction: float = 0.25
    gate_far_margin: float = 0.005
    gate_max_far: float = 0.01
    gate_recall_margin: float = 0.02
    gate_seed: int = 0
    # after the gate, fit the promoted and new series again on the whole range, holdout included, so a
    # release's models have seen its latest windows (pipelines/refit.py)
    refit_after_gate: bool = True
    # a series whose scored windows' largest per-feature PSI against its training reference exceeds
    # this is drifted (fleetscore drift, release --only drifted); 0.25 is the usual "significant shift"
    drift_threshold: float = 0.25
    # release --only stale retrains the series whose model was trained longer ago than this
    max_model_age: str = "30d"
