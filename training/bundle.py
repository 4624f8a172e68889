"""The release bundle: every (device, sensor) model of a release as plain arrays, no pickle.

On disk a bundle is a folder with ``bundle.npz`` (numeric arrays and the string keys, loaded with
``allow_pickle=False``) and ``manifest.json`` (feature set, hyperparameters and per-series provenance).
Loading therefore never executes code. Model ``i`` is ``keys[i]``; its support vectors are rows
``sv_offsets[i]:sv_offsets[i + 1]`` of ``support_vectors`` (in the scaled feature space, as scikit-learn
keeps them). :meth:`ReleaseBundle.to_sklearn` rebuilds the exact ``StandardScaler + OneClassSVM``.

The manifest records the detector family (``detector``, see :mod:`training.detectors`) and the bundle
format (``format``). Format 1 (written before detector families existed) has no ``detector`` field and
loads as family ``ocsvm``. Every family keeps its per-series parameters in the same arrays (a family
without support vectors has none), so joining, subsetting and saving work the same for all.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetscore.errors import RegistryError
from fleetscore.training.features import context_windows as _context_windows

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # format 1: no "detector" field, the family is ocsvm
DEFAULT_DETECTOR = "ocsvm"
ARRAYS_FILE = "bundle.npz"
MANIFEST_FILE = "manifest.json"
BUNDLE_SHA_TAG = "fleetscore.bundle_sha256"  # the model version tag holding the bundle's files_digest

# per-model arrays (first axis = model) and per-support-vector arrays (first axis = support vector)
_MODEL_ARRAYS = ("mean", "scale", "var", "n_samples", "intercept", "gamma", "nu", "n_iter", "ref_edges", "ref_expected")
# drift reference per model and feature (training.drift): the training rows' decile edges and the share of
# those rows in each of the bins they bound; NaN when unknown (bundles written before drift existed)
REFERENCE_EDGES = 9
_SV_ARRAYS = ("support_vectors", "support", "dual_coef")


@dataclass
class ReleaseBundle:
    """Every (device, sensor) model of a release. Index ``i`` of each per-model array is ``keys[i]``."""

    keys: list[tuple[str, str]]
    features: tuple[str, ...]
    rolling_window: int
    mean: np.ndarray  # (M, F) scaler mean_
    scale: np.ndarray  # (M, F) scaler scale_
    var: np.ndarray  # (M, F) scaler var_
    n_samples: np.ndarray  # (M,) rows the model was fitted on
    sv_offsets: np.ndarray  # (M + 1,) int64
    support_vectors: np.ndarray  # (S, F) scaled space
    support: np.ndarray  # (S,) int32, index of each support vector in its training rows
    dual_coef: np.ndarray  # (S,)
    intercept: np.ndarray  # (M,) OneClassSVM.intercept_ (offset_ = -intercept)
    gamma: np.ndarray  # (M,)
    nu: np.ndarray  # (M,)
    n_iter: np.ndarray  # (M,)
    manifest: dict[str, Any] = field(default_factory=dict)
    detector: str = DEFAULT_DETECTOR  # the family that fitted the arrays and scores them
    # ocsvm: "kernel" (score = sum_j a_j K_j + intercept, bundles written before the log form) or "log"
    # (score = log(sum_j a_j K_j) + intercept, computed stably: it keeps falling far from the data)
    score_form: str = "kernel"
    ref_edges: np.ndarray | None = None  # (M, F, 9) drift reference: decile edges of the training rows
    ref_expected: np.ndarray | None = None  # (M, F, 10) share of training rows in each bin

    def __post_init__(self) -> None:
        self.keys = [(str(d), str(s)) for d, s in self.keys]
        self.features = tuple(self.features)
        shape = (len(self.keys), len(self.features))
        if self.ref_edges is None or self.ref_edges.shape[:2] != shape:
            self.ref_edges = np.full((*shape, REFERENCE_EDGES), np.nan)
        if self.ref_expected is None or self.ref_expected.shape[:2] != shape:
            self.ref_expected = np.full((*shape, REFERENCE_EDGES + 1), np.nan)
        self._index: dict[tuple[str, str], int] | None = None

    # -- shape ---------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def context_windows(self) -> int:
        """How many windows BEFORE a scoring range the features need."""
        return _context_windows(self.features, self.rolling_window)

    @property
    def n_support(self) -> np.ndarray:
        """Support vectors per model, shape ``(M,)``."""
        return np.diff(self.sv_offsets)

    def index(self, device: str, sensor: str) -> int:
        """Model position of ``(device, sensor)``; :class:`KeyError` when the series is not in the bundle."""
        if self._index is None:
            self._index = {key: i for i, key in enumerate(self.keys)}
        return self._index[(str(device), str(sensor))]

    def aliased(self, aliases: dict[tuple[str, str], tuple[str, str]]) -> ReleaseBundle:
        """A view sharing this bundle's arrays in which each key of ``aliases`` resolves (``index``) to the
        model of its value: a series scored by another series' model (cold start: a fleet model)."""
        view = replace(self)
        index = {key: i for i, key in enumerate(self.keys)}
        index.update({key: index[target] for key, target in aliases.items() if target in index})
        view._index = index
        return view

    def series_manifest(self, device: str, sensor: str) -> dict[str, Any]:
        """The manifest record (provenance) of one series, ``{}`` when none was written."""
        i = self.index(device, sensor)
        records = self.manifest.get("series", [])
        return dict(records[i]) if i < len(records) else {}

    # -- scikit-learn ---------------------------------------------------------------------------------

    def to_sklearn(self, device: str, sensor: str) -> Pipeline:
        """Rebuild the fitted ``Pipeline([StandardScaler(), OneClassSVM()])`` of one series."""
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import OneClassSVM

        if self.detector != "ocsvm":
            raise RegistryError(f"series {device}/{sensor}: a {self.detector!r} bundle has no scikit-learn model")
        i = self.index(device, sensor)
        n_features = len(self.features)
        n_samples = int(self.n_samples[i])
        scaler = StandardScaler()
        scaler.mean_ = self.mean[i].copy()
        scaler.scale_ = self.scale[i].copy()
        scaler.var_ = self.var[i].copy()
        scaler.n_samples_seen_ = n_samples
        scaler.n_features_in_ = n_features

        a, b = int(self.sv_offsets[i]), int(self.sv_offsets[i + 1])
        svm = OneClassSVM(kernel="rbf", nu=float(self.nu[i]), gamma=float(self.gamma[i]))
        svm._sparse = False
        svm._gamma = float(self.gamma[i])
        svm.support_ = self.support[a:b].astype(np.int32)
        svm.support_vectors_ = np.ascontiguousarray(self.support_vectors[a:b], dtype=np.float64)
        svm._n_support = np.array([b - a, 0], dtype=np.int32)
        svm.dual_coef_ = self.dual_coef[a:b].reshape(1, -1).astype(np.float64)
        svm._dual_coef_ = svm.dual_coef_
        # the log form's threshold as the kernel sum's offset: the same sign, so the same predictions
        intercept = -math.exp(-self.intercept[i]) if self.score_form == "log" else self.intercept[i]
        svm.intercept_ = np.array([intercept], dtype=np.float64)
        svm._intercept_ = svm.intercept_.copy()
        svm.offset_ = -svm._intercept_
        svm._probA = np.empty(0, dtype=np.float64)
        svm._probB = np.empty(0, dtype=np.float64)
        svm.fit_status_ = 0
        svm.shape_fit_ = (n_samples, n_features)
        svm.n_features_in_ = n_features
        svm.n_iter_ = int(self.n_iter[i])
        return Pipeline([("scaler", scaler), ("svm", svm)])

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def empty(cls, features: Sequence[str], rolling_window: int, detector: str = DEFAULT_DETECTOR) -> ReleaseBundle:
        """A bundle with no model (the start of a fleet, or a shard where every series was skipped)."""
        f = len(features)
        return cls(
            keys=[], features=tuple(features), rolling_window=rolling_window,
            mean=np.zeros((0, f)), scale=np.ones((0, f)), var=np.zeros((0, f)),
            n_samples=np.zeros(0, dtype=np.int64), sv_offsets=np.zeros(1, dtype=np.int64),
            support_vectors=np.zeros((0, f)), support=np.zeros(0, dtype=np.int32), dual_coef=np.zeros(0),
            intercept=np.zeros(0), gamma=np.zeros(0), nu=np.zeros(0), n_iter=np.zeros(0, dtype=np.int64),
            detector=detector,
        )

    @classmethod
    def from_sklearn(
        cls,
        keys: Sequence[tuple[str, str]],
        pipelines: Sequence[Pipeline],
        features: Sequence[str],
        rolling_window: int,
        manifest: dict[str, Any] | None = None,
    ) -> ReleaseBundle:
        """Pack fitted ``Pipeline([StandardScaler(), OneClassSVM(kernel="rbf")])`` objects, one per key."""
        if len(keys) != len(pipelines):
            raise ValueError(f"{len(keys)} keys but {len(pipelines)} pipelines")
        if not pipelines:
            empty = cls.empty(features, rolling_window)
            empty.manifest = dict(manifest or {})
            return empty
        scalers = [p.steps[0][1] for p in pipelines]
        svms = [p.steps[-1][1] for p in pipelines]
        counts = np.array([len(svm.support_vectors_) for svm in svms], dtype=np.int64)
        return cls(
            keys=list(keys), features=tuple(features), rolling_window=rolling_window,
            mean=np.stack([sc.mean_ for sc in scalers]).astype(np.float64),
            scale=np.stack([sc.scale_ for sc in scalers]).astype(np.float64),
            var=np.stack([sc.var_ for sc in scalers]).astype(np.float64),
            n_samples=np.array([svm.shape_fit_[0] for svm in svms], dtype=np.int64),
            sv_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            support_vectors=np.concatenate([svm.support_vectors_ for svm in svms]).astype(np.float64),
            support=np.concatenate([svm.support_ for svm in svms]).astype(np.int32),
            dual_coef=np.concatenate([svm._dual_coef_.ravel() for svm in svms]).astype(np.float64),
            intercept=np.array([svm._intercept_[0] for svm in svms], dtype=np.float64),
            gamma=np.array([svm._gamma for svm in svms], dtype=np.float64),
            nu=np.array([svm.nu for svm in svms], dtype=np.float64),
            n_iter=np.array([svm.n_iter_ for svm in svms], dtype=np.int64),
            manifest=dict(manifest or {}),
        )

    @classmethod
    def concat(cls, bundles: Sequence[ReleaseBundle], manifest: dict[str, Any] | None = None) -> ReleaseBundle:
        """Join bundles of the same feature set; per-series manifest records are joined too."""
        if not bundles:
            raise ValueError("concat needs at least one bundle")
        first = bundles[0]
        for other in bundles[1:]:
            if other.detector != first.detector and len(other) and len(first):
                raise RegistryError(f"cannot join a {first.detector!r} bundle and a {other.detector!r} bundle")
            if other.features != first.features or other.rolling_window != first.rolling_window:
                raise RegistryError(
                    f"cannot join bundles with features {list(first.features)} (rolling_window "
                    f"{first.rolling_window}) and {list(other.features)} (rolling_window {other.rolling_window})"
                )
        keys = [key for b in bundles for key in b.keys]
        if len(set(keys)) != len(keys):
            raise RegistryError("cannot join bundles: a (device, sensor) series appears twice")
        counts = np.concatenate([b.n_support for b in bundles]) if keys else np.zeros(0, dtype=np.int64)
        arrays = {name: np.concatenate([getattr(b, name) for b in bundles]) for name in _MODEL_ARRAYS + _SV_ARRAYS}
        series = [rec for b in bundles for rec in _series_records(b)]
        merged_manifest = dict(manifest if manifest is not None else first.manifest)
        merged_manifest["series"] = series
        detectors = {b.detector for b in bundles if len(b)} or {first.detector}
        forms = {b.score_form for b in bundles if len(b)} or {first.score_form}
        if len(forms) > 1:
            raise RegistryError(f"cannot join bundles of score forms {sorted(forms)}")
        return cls(
            detector=detectors.pop(), score_form=forms.pop(),
            keys=keys, features=first.features, rolling_window=first.rolling_window,
            sv_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            manifest=merged_manifest, **arrays,
        )

    def subset(self, indices: Iterable[int]) -> ReleaseBundle:
        """A bundle of the models at ``indices`` (in that order), with their manifest records."""
        idx = np.asarray(list(indices), dtype=np.int64)
        counts = self.n_support[idx] if len(idx) else np.zeros(0, dtype=np.int64)
        sv_idx = (
            np.concatenate([np.arange(self.sv_offsets[i], self.sv_offsets[i + 1]) for i in idx])
            if len(idx) else np.zeros(0, dtype=np.int64)
        ).astype(np.int64)
        records = _series_records(self)
        manifest = dict(self.manifest)
        manifest["series"] = [records[i] for i in idx]
        return replace(
            self,
            keys=[self.keys[i] for i in idx],
            sv_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            manifest=manifest,
            **{name: getattr(self, name)[idx] for name in _MODEL_ARRAYS},
            **{name: getattr(self, name)[sv_idx] for name in _SV_ARRAYS},
        )

    # -- files ----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the bundle folder (``bundle.npz`` + ``manifest.json``) atomically: a crash leaves no
        half-written bundle at ``path``."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            devices = np.array([d for d, _ in self.keys], dtype=np.str_)
            sensors = np.array([s for _, s in self.keys], dtype=np.str_)
            np.savez(
                tmp / ARRAYS_FILE, devices=devices, sensors=sensors, sv_offsets=self.sv_offsets,
                **{name: getattr(self, name) for name in _MODEL_ARRAYS + _SV_ARRAYS},
            )
            manifest = dict(self.manifest)
            from fleetscore.training.detectors import get_detector

            manifest.update(format=FORMAT_VERSION, detector=self.detector,
                            detector_version=get_detector(self.detector).version, score_form=self.score_form,
                            features=list(self.features),
                            rolling_window=self.rolling_window,
                            models=len(self.keys))
            (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, default=str) + "\n")
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReleaseBundle:
        """Read a bundle folder written by :meth:`save` (no pickle: ``allow_pickle=False``)."""
        folder = Path(path)
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
            with np.load(folder / ARRAYS_FILE, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError as exc:
            raise RegistryError(f"{folder}: not a release bundle (missing {Path(exc.filename).name})") from exc
        except (ValueError, OSError, EOFError, KeyError, TypeError, zipfile.BadZipFile, zlib.error) as exc:
            raise RegistryError(f"{folder}: unreadable release bundle: {' '.join(str(exc).split())[:200]}") from exc
        if manifest.get("format") not in READABLE_FORMATS:
            raise RegistryError(f"{folder}: bundle format {manifest.get('format')!r}, expected one of "
                                f"{list(READABLE_FORMATS)}")
        detector = str(manifest.get("detector", DEFAULT_DETECTOR))
        from fleetscore.training.detectors import DETECTORS

        if detector not in DETECTORS:
            raise RegistryError(f"{folder}: unknown detector {detector!r} in {MANIFEST_FILE}")
        keys = list(zip(arrays.pop("devices").tolist(), arrays.pop("sensors").tolist(), strict=True))
        return cls(
            keys=keys, features=tuple(manifest["features"]), rolling_window=int(manifest["rolling_window"]),
            manifest=manifest, detector=detector, score_form=str(manifest.get("score_form", "kernel")), **arrays,
        )


def _series_records(bundle: ReleaseBundle) -> list[dict[str, Any]]:
    records = list(bundle.manifest.get("series", []))
    if len(records) != len(bundle.keys):
        records = [{"device": d, "sensor": s} for d, s in bundle.keys]
    return records


# -- tamper evidence ----------------------------------------------------------------------------

def files_digest(files: Mapping[str, bytes]) -> str:
    """SHA-256 of a bundle's files (name, size and bytes of each, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def bundle_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a bundle folder's files, as recorded with its registered version."""
    folder = Path(path)
    try:
        return files_digest({p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()})
    except OSError as exc:
        raise RegistryError(f"{folder}: unreadable release bundle: {exc.strerror or exc}") from exc


def verify_bundle(path: str | os.PathLike[str], expected: str, label: str) -> None:
    """Raise :class:`RegistryError` naming ``label`` (e.g. ``release v3``) unless the folder's digest is
    ``expected``: a bundle edited, truncated or replaced after registration is never loaded."""
    found = bundle_digest(path)
    if found != expected:
        raise RegistryError(f"{label}: the bundle at {path} does not match the SHA-256 recorded at registration "
                            f"(edited, truncated or replaced): {found[:12]} != {expected[:12]}")
