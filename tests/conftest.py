"""Shared fixtures. Server fixtures live in tests/fixtures/ (one module per server)."""

from __future__ import annotations

import os
from pathlib import Path

# pandas 3's defaults on the pinned pandas 2.3 (as fleetscore/__init__.py sets them), before any plugin or
# test module imports pandas: tests assert what the CLI gives
os.environ.setdefault("PANDAS_FUTURE_INFER_STRING", "1")
os.environ.setdefault("PANDAS_COPY_ON_WRITE", "1")

import pytest

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.azurite",
    "tests.fixtures.dask_cluster",
    "tests.fixtures.mlflow_server",
]

REFERENCE_DATA = Path(__file__).resolve().parents[2] / "shared" / "reference-data"


@pytest.fixture(scope="session")
def reference_data() -> Path:
    """The folder of the real reference data (../shared/reference-data), never copied into the project."""
    if not (REFERENCE_DATA / "sensor_data.csv").exists():
        pytest.fail(f"reference data not found at {REFERENCE_DATA}")
    return REFERENCE_DATA


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder as the current directory, with no FLEETSCORE_* variables set."""
    import os

    for name in list(os.environ):
        if name.startswith("FLEETSCORE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path
