"""Detector families: how a release fits a fleet's features into bundle arrays and scores them.

A family is a small :class:`Detector` (one module each) and one line in :data:`DETECTORS`.
``[training] detector = "<name>"`` selects it; the bundle records it (``manifest.json`` ``detector``
and ``detector_version``) so scoring uses the family that fitted it. See docs/detection.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from fleetscore.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from fleetscore.progress import ProgressCallback
    from fleetscore.training.bundle import ReleaseBundle
    from fleetscore.training.config import TrainingConfig
    from fleetscore.training.fit import ShardFit


class Detector(Protocol):
    """One detector family. ``version`` is its bundle-array layout, written into each bundle;
    ``by_window``: whether it judges the rows of one device and window together (scoring then passes
    ``moments``, an id per row that is the same for the rows of one device and window)."""

    name: str
    version: int
    by_window: bool

    def fit_shard(self, windows: pd.DataFrame, config: TrainingConfig, exclude: frozenset[tuple[str, str]],
                  version: int | None, on_progress: ProgressCallback | None) -> ShardFit:
        """Fit every series of ``windows`` (a shard of the fleet) into one partial bundle."""
        ...

    def decision(self, bundle: ReleaseBundle, feats: np.ndarray, row_model: np.ndarray,
                 moments: np.ndarray | None = None) -> np.ndarray:
        """Scores of feature rows ``(n, F)`` under models ``row_model`` (contiguous per model);
        negative = anomaly."""
        ...

    def reasons(self, bundle: ReleaseBundle, feats: np.ndarray, row_model: np.ndarray,
                moments: np.ndarray | None = None) -> np.ndarray:
        """What drove each row's score: a feature name (``sensor:feature`` for families that judge a
        device's sensors together), as an object array."""
        ...

    def describe(self, bundle: ReleaseBundle, index: int) -> dict[str, Any]:
        """A JSON-ready description of model ``index`` (its parameters, for reports and the CLI)."""
        ...


from fleetscore.training.detectors.device import DeviceDetector  # noqa: E402
from fleetscore.training.detectors.ocsvm import OneClassSVMDetector  # noqa: E402
from fleetscore.training.detectors.robust import RobustDetector  # noqa: E402

DETECTORS: dict[str, Detector] = {
    "ocsvm": OneClassSVMDetector(),
    "robust": RobustDetector(),
    "device": DeviceDetector(),
}


def get_detector(name: str) -> Detector:
    """The family registered as ``name``; :class:`ConfigError` naming the setting when there is none."""
    if name not in DETECTORS:
        raise ConfigError(f"training.detector: unknown detector {name!r}, expected one of {sorted(DETECTORS)}")
    return DETECTORS[name]
