"""fleetscore: anomaly detection for fleets of IoT devices.

This package holds only what every layer shares: the version and the exception hierarchy.
The architecture lives in the top-level packages ``ingestion``, ``data_checks``, ``training``,
``scoring`` and ``pipelines`` (see docs/architecture.md).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fleetscore")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
