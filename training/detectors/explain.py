"""The reason of a score, for families that judge each series alone: the feature furthest from the
series' training centre in its training scale."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fleetscore.training.bundle import ReleaseBundle


def feature_reasons(bundle: ReleaseBundle, feats: np.ndarray, row_model: np.ndarray) -> np.ndarray:
    """Per row, the name of the feature with the largest ``|x - mean| / scale`` under its model (an
    unknown feature counts as at the centre): an object array of feature names."""
    names = np.asarray(bundle.features, dtype=object)
    if len(row_model) == 0:
        return names[np.zeros(0, dtype=np.int64)]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        z = np.abs(feats - bundle.mean[row_model]) / bundle.scale[row_model]
    picked: np.ndarray = names[np.nan_to_num(z, nan=0.0, posinf=np.finfo(np.float64).max).argmax(axis=1)]
    return picked
