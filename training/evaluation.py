"""The evaluation gate: per series, the new model (challenger) against the champion's, on a holdout.

Both models score the same recent validated windows (the holdout), as they are and with synthetic
anomalies injected (the simulator's six kinds, :mod:`training.injection`). A series'
challenger passes when its false-alarm rate on the holdout is at most
``max(champion's + gate_far_margin, gate_max_far)`` and its lowest recall over the kinds is at least
the champion's minus ``gate_recall_margin`` (or the champion's own false-alarm rate is past
``gate_max_far`` and the challenger's lower: a champion that flags the holdout as it is has the recall
of a model flagging everything). Passing series take the new model, failing ones keep the
champion's model (copied into the new release, its manifest record says ``kept from vN``), series the
champion does not have enter as ``new``. ``force`` promotes every challenger; with no champion every
series is ``new``. Champion series with no challenger (excluded, too few rows, failed fit) are kept.
Pure: bundles and DataFrames in, a bundle and decisions out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fleetscore.errors import TrainingError
from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.config import TrainingConfig
from fleetscore.training.features import series_starts
from fleetscore.training.injection import KINDS, perturb
from fleetscore.training.kernel import score_windows


@dataclass
class GateResult:
    """The merged release bundle and the gate's decisions (series -> promoted | kept | new)."""

    bundle: ReleaseBundle
    decisions: dict[tuple[str, str], str]
    counts: dict[str, int] = field(default_factory=dict)
    champion_version: int | None = None
    # the challenger's metrics on the holdout, one row per series (evaluate's columns)
    holdout_metrics: pd.DataFrame = field(default_factory=pd.DataFrame)

    def holdout_summary(self) -> dict[str, float]:
        """The challenger's holdout metrics over its series: ``holdout_far`` (mean false-alarm rate),
        ``holdout_recall_<kind>`` and ``holdout_recall`` (mean of each series' lowest recall)."""
        table = self.holdout_metrics
        if table.empty:
            return {}
        return {f"holdout_{name}": float(table[name].mean()) for name in table.columns if table[name].notna().any()}

    def summary(self, version: int, failed: int = 0, skipped: int = 0) -> str:
        """``released v8: 9,812 promoted, 171 kept from v7, 17 new, 0 failed``."""
        kept = f"{self.counts.get('kept', 0):,} kept" + (
            f" from v{self.champion_version}" if self.champion_version is not None else "")
        text = (f"released v{version}: {self.counts.get('promoted', 0):,} promoted, {kept}, "
                f"{self.counts.get('new', 0):,} new, {failed:,} failed")
        return text + (f", {skipped:,} skipped" if skipped else "")


def evaluate(bundle: ReleaseBundle, holdout: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per series of ``bundle`` found in ``holdout``: false-alarm rate on the holdout as it is, recall on
    each injected kind, and the lowest recall. Index: (device, sensor)."""
    base = score_windows(bundle, holdout)
    keys = ["device", "sensor"]
    result = base.groupby(keys, sort=False)["prediction"].mean().rename("far").to_frame()
    for kind in KINDS:
        perturbed, mask = perturb(holdout, kind, seed)
        scored = score_windows(bundle, perturbed)
        in_bundle = _in_bundle_mask(bundle, holdout)
        flagged = scored.assign(injected=mask[in_bundle])
        flagged = flagged[flagged["injected"]]
        result[f"recall_{kind}"] = flagged.groupby(keys, sort=False)["prediction"].mean()
    result["recall"] = result[[f"recall_{k}" for k in KINDS]].min(axis=1)
    return result


def _in_bundle_mask(bundle: ReleaseBundle, windows: pd.DataFrame) -> np.ndarray:
    starts = series_starts(windows)
    if len(windows) == 0:
        return np.zeros(0, dtype=bool)
    first = starts[:-1]
    devices = windows["device"].take(first).to_numpy()
    sensors = windows["sensor"].take(first).to_numpy()
    known = set(bundle.keys)
    present = np.array([(str(d), str(s)) in known for d, s in zip(devices, sensors, strict=True)])
    return np.repeat(present, np.diff(starts))


def run_gate(
    challenger: ReleaseBundle,
    champion: ReleaseBundle | None,
    holdout: pd.DataFrame,
    config: TrainingConfig,
    champion_version: int | None = None,
    force: bool = False,
) -> GateResult:
    """Decide per series which model enters the release; return the merged bundle and the decisions."""
    decisions: dict[tuple[str, str], str] = {}
    records = _records(challenger)
    if champion is not None and len(champion) and champion.detector != challenger.detector:
        if not force:
            raise TrainingError(
                f"training.detector: the champion v{champion_version} uses detector {champion.detector!r}, the "
                f"challenger {challenger.detector!r}; a release holds one family: release with --force to switch")
        champion = None  # switching families: every challenger enters, champion-only series are dropped
    ch_metrics = evaluate(challenger, holdout, config.gate_seed) if len(holdout) else pd.DataFrame()
    if champion is None or len(champion) == 0:
        return _all_new(challenger, records, ch_metrics)
    champion_keys = set(champion.keys)
    old_metrics = evaluate(champion.subset([champion.index(*k) for k in challenger.keys if k in champion_keys]),
                           holdout, config.gate_seed)
    take_new: list[int] = []
    keep_old: list[int] = []
    for i, key in enumerate(challenger.keys):
        gate: dict[str, Any] = {"challenger": _metrics(ch_metrics, key)}
        if key not in champion_keys:
            decision = "new"
        else:
            gate["champion"] = _metrics(old_metrics, key)
            passed = _passes(gate["challenger"], gate["champion"], config)
            gate["passed"] = passed
            decision = "promoted" if passed or force else "kept"
            if force and not passed:
                gate["forced"] = True
        decisions[key] = decision
        if decision == "kept":
            keep_old.append(champion.index(*key))
            continue
        records[i].update(decision=decision, gate=gate)
        take_new.append(i)
    # champion series without a challenger keep their model
    challenger_keys = set(challenger.keys)
    for j, key in enumerate(champion.keys):
        if key not in challenger_keys:
            keep_old.append(j)
            decisions[key] = "kept"
    new_part = challenger.subset(take_new)
    new_part.manifest["series"] = [records[i] for i in take_new]
    old_part = champion.subset(keep_old)
    old_records = []
    for j, rec in zip(keep_old, old_part.manifest["series"], strict=True):
        key = champion.keys[j]
        rec = dict(rec)
        rec.update(decision="kept", kept_from=champion_version,
                   trained_in=rec.get("trained_in") or champion_version)
        if key in challenger_keys:
            rec["gate"] = {"challenger": _metrics(ch_metrics, key), "champion": _metrics(old_metrics, key),
                           "passed": False}
        old_records.append(rec)
    old_part.manifest["series"] = old_records
    bundle = ReleaseBundle.concat([new_part, old_part], manifest=dict(challenger.manifest))
    return _result(bundle, decisions, champion_version, ch_metrics)


def _all_new(challenger: ReleaseBundle, records: list[dict[str, Any]], ch_metrics: pd.DataFrame) -> GateResult:
    """No champion (the first release, or a switch of family): every challenger enters as new."""
    decisions: dict[tuple[str, str], str] = {}
    for i, key in enumerate(challenger.keys):
        decisions[key] = "new"
        records[i].update(decision="new")
        if key in ch_metrics.index:
            records[i]["gate"] = {"challenger": _metrics(ch_metrics, key)}
    bundle = challenger.subset(range(len(challenger)))
    bundle.manifest["series"] = records
    return _result(bundle, decisions, None, ch_metrics)


def _records(bundle: ReleaseBundle) -> list[dict[str, Any]]:
    records = list(bundle.manifest.get("series", []))
    if len(records) != len(bundle):
        records = [{"device": d, "sensor": s} for d, s in bundle.keys]
    return [dict(r) for r in records]


def _metrics(table: pd.DataFrame, key: tuple[str, str]) -> dict[str, float]:
    if key not in table.index:
        return {}
    row = table.loc[key]
    return {name: round(float(row[name]), 6) for name in table.columns if pd.notna(row[name])}


def _passes(new: dict[str, float], old: dict[str, float], config: TrainingConfig) -> bool:
    if "far" not in new or "far" not in old:
        return True  # no holdout rows for this series: nothing says the new model is worse
    far_ok = new["far"] <= max(old["far"] + config.gate_far_margin, config.gate_max_far)
    recall_ok = new.get("recall", 0.0) >= old.get("recall", 0.0) - config.gate_recall_margin
    # a champion that flags the holdout as it is no longer fits the series: its recall is that of a
    # model flagging everything, nothing a challenger with fewer false alarms has to match
    champion_unfit = old["far"] > config.gate_max_far and new["far"] < old["far"]
    return bool(far_ok and (recall_ok or champion_unfit))


def _result(bundle: ReleaseBundle, decisions: dict[tuple[str, str], str], champion_version: int | None,
            holdout_metrics: pd.DataFrame) -> GateResult:
    counts = {"promoted": 0, "kept": 0, "new": 0}
    for decision in decisions.values():
        counts[decision] += 1
    return GateResult(bundle=bundle, decisions=decisions, counts=counts, champion_version=champion_version,
                      holdout_metrics=holdout_metrics)
