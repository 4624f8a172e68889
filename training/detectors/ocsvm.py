"""Family ``ocsvm`` (the default): ``StandardScaler + OneClassSVM(kernel="rbf")`` per series.

Fitting is :func:`training.fit.fit_ocsvm_shard`, scoring the blocked kernel of :mod:`training.kernel`;
this module only names them for the registry. Bundles of format 1 are of this family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from fleetscore.progress import ProgressCallback
    from fleetscore.training.bundle import ReleaseBundle
    from fleetscore.training.config import TrainingConfig
    from fleetscore.training.fit import ShardFit


class OneClassSVMDetector:
    """One-class SVM per series (support vectors, dual coefficients, intercept in the bundle)."""

    name = "ocsvm"
    version = 1
    by_window = False

    def fit_shard(self, windows: pd.DataFrame, config: TrainingConfig, exclude: frozenset[tuple[str, str]],
                  version: int | None, on_progress: ProgressCallback | None) -> ShardFit:
        """One libsvm fit per series (see :func:`training.fit.fit_ocsvm_shard`)."""
        from fleetscore.training.fit import fit_ocsvm_shard

        return fit_ocsvm_shard(windows, config, exclude, version, on_progress)

    def decision(self, bundle: ReleaseBundle, feats: np.ndarray, row_model: np.ndarray,
                 moments: np.ndarray | None = None) -> np.ndarray:
        """``OneClassSVM.decision_function`` of every row, by the blocked kernel."""
        from fleetscore.training.kernel import decision_function

        return decision_function(bundle, feats, row_model)

    def reasons(self, bundle: ReleaseBundle, feats: np.ndarray, row_model: np.ndarray,
                moments: np.ndarray | None = None) -> np.ndarray:
        """The feature furthest from the series' scaler mean, in its standard deviations."""
        from fleetscore.training.detectors.explain import feature_reasons

        return feature_reasons(bundle, feats, row_model)

    def describe(self, bundle: ReleaseBundle, index: int) -> dict[str, Any]:
        """Support-vector count, gamma, nu and offset of model ``index``."""
        return {"detector": self.name, "n_support": int(bundle.n_support[index]),
                "gamma": float(bundle.gamma[index]), "nu": float(bundle.nu[index]),
                "offset": float(-bundle.intercept[index])}
