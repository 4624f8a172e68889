"""What to simulate (:class:`SimulationSpec`), the window grid the labels live on, and blocks of readings."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from fleetscore.errors import ConfigError

PROFILES = ("uniform", "industrial")
# per profile: devices, sensors, anomaly-free span at the start, anomaly rate
PROFILE_DEFAULTS: dict[str, tuple[int, int, timedelta, float]] = {
    "uniform": (3, 5, timedelta(hours=1), 0.01),
    "industrial": (12, 4, timedelta(hours=2), 0.05),
}
_NS = 1_000_000_000


@dataclass(frozen=True)
class SimulationSpec:
    """What to simulate. ``start`` is naive UTC; no anomaly starts in the first ``clean`` span."""

    devices: int = 3
    sensors: int = 5
    start: datetime = datetime(2024, 1, 1)
    duration: timedelta = timedelta(hours=2)
    interval: timedelta = timedelta(seconds=1)
    window: timedelta = timedelta(seconds=5)
    seed: int = 0
    anomaly_rate: float = 0.01
    profile: str = "uniform"
    clean: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"simulate: --profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.devices < 1 or self.sensors < 1:
            raise ConfigError("simulate: --devices and --sensors must be at least 1")
        if self.profile == "industrial" and self.sensors != 4:
            raise ConfigError(f"simulate: the industrial profile has 4 sensors per device, got --sensors "
                              f"{self.sensors}")
        if self.interval > self.window:
            raise ConfigError(f"simulate: --interval {self.interval} is longer than the window {self.window}: "
                              "some windows would hold no reading")
        if self.duration < self.interval:
            raise ConfigError(f"simulate: --duration {self.duration} is shorter than --interval {self.interval}")
        if not 0 <= self.anomaly_rate < 0.5:
            raise ConfigError(f"simulate: --anomaly-rate must be in [0, 0.5), got {self.anomaly_rate}")

    @classmethod
    def for_profile(cls, profile: str = "uniform", *, devices: int | None = None, sensors: int | None = None,
                    clean: timedelta | None = None, anomaly_rate: float | None = None,
                    **fields: object) -> SimulationSpec:
        """A spec with the profile's defaults for what is not given (``None``)."""
        if profile not in PROFILE_DEFAULTS:
            raise ConfigError(f"simulate: --profile must be one of {', '.join(PROFILES)}, got {profile!r}")
        d, s, c, r = PROFILE_DEFAULTS[profile]
        spec = cls(profile=profile, devices=d if devices is None else devices,
                   sensors=s if sensors is None else sensors, clean=c if clean is None else clean,
                   anomaly_rate=r if anomaly_rate is None else anomaly_rate)
        return replace(spec, **fields)  # type: ignore[arg-type]

    @property
    def steps(self) -> int:
        """Reading steps per series (the industrial profile drops some of them)."""
        return int(self.duration / self.interval)

    @property
    def readings(self) -> int:
        """Reading steps in all (an upper bound on the readings of the industrial profile)."""
        return self.steps * self.devices * self.sensors

    def fingerprint(self) -> str:
        """A content hash of the spec (what ``--ingest`` records in ``sources``)."""
        fields = asdict(self)
        if self.profile == "uniform" and self.clean == timedelta(hours=1):
            del fields["profile"], fields["clean"]  # the hash of a spec written before profiles existed
        text = repr(sorted((k, str(v)) for k, v in fields.items()))
        return hashlib.sha256(("simulate:" + text).encode()).hexdigest()


def ns(value: datetime | timedelta) -> int:
    """A time (naive UTC) or a duration in integer nanoseconds."""
    if isinstance(value, timedelta):
        return round(value.total_seconds() * _NS)
    return int(pd.Timestamp(value).value)


class Grid:
    """Times of readings and windows in ns."""

    def __init__(self, spec: SimulationSpec) -> None:
        self.start = ns(spec.start)
        self.interval = ns(spec.interval)
        self.window = ns(spec.window)
        self.origin = (self.start // self.window) * self.window
        self.end = self.start + spec.steps * self.interval
        self.n_windows = (self.end - self.origin) // self.window  # full windows before the end
        self.first_eligible = -(-(self.start + ns(spec.clean) - self.origin) // self.window)

    def first_step(self, window_index: int) -> int:
        """The first reading step at or after the start of window ``window_index``."""
        t = self.origin + window_index * self.window
        return max(0, -(-(t - self.start) // self.interval))


@dataclass
class Block:
    """A block of readings: times (int64 ns), series index (device-major) and value."""

    ts: np.ndarray
    series: np.ndarray
    value: np.ndarray
