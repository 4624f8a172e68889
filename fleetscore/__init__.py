"""fleetscore: anomaly detection for fleets of IoT devices.

The one installed package. Its layers are the subpackages ``fleetscore.ingestion``,
``fleetscore.data_checks``, ``fleetscore.training``, ``fleetscore.scoring`` and ``fleetscore.pipelines``,
kept in the repository's top-level folders of the same names (setuptools ``package_dir``; see
docs/architecture.md). This module itself holds only the version; ``fleetscore.errors`` the exception
hierarchy every layer shares.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version

# pandas 2.3 (pinned: mlflow 3.15, the newest that azureml-mlflow accepts, requires pandas<3) run with
# pandas 3's defaults, which the code is written for: the "str" dtype and copy-on-write. pandas reads
# these at import; a process that imported pandas before fleetscore keeps its own settings.
if "pandas" not in sys.modules:
    os.environ.setdefault("PANDAS_FUTURE_INFER_STRING", "1")
    os.environ.setdefault("PANDAS_COPY_ON_WRITE", "1")

try:
    __version__ = version("fleetscore")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
