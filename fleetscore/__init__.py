"""fleetscore: anomaly detection for fleets of IoT devices.

The one installed package. Its layers are the subpackages ``fleetscore.ingestion``,
``fleetscore.data_checks``, ``fleetscore.training``, ``fleetscore.scoring`` and ``fleetscore.pipelines``,
kept in the repository's top-level folders of the same names (setuptools ``package_dir``; see
docs/architecture.md). This module itself holds only the version; ``fleetscore.errors`` the exception
hierarchy every layer shares.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fleetscore")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
