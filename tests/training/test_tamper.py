"""Releases are tamper-evident (issue 15): the bundle's SHA-256 is recorded with the registered version
and checked on every load, the temp-folder caches included; an edited, truncated or unreadable bundle is
a one-line error naming the version. Loading never executes code (allow_pickle=False, test_bundle.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from fleetscore.errors import RegistryError
from fleetscore.scoring.shard import load_bundle
from fleetscore.training.bundle import BUNDLE_SHA_TAG, ReleaseBundle, bundle_digest
from tests.training.helpers import random_fleet


def _edit(folder: Path, name: str, change) -> None:  # type: ignore[no-untyped-def]
    path = folder / "bundle.npz"
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[name] = change(arrays[name])
    np.savez(path, **arrays)


EDITS = {
    "intercept += 1e6": lambda folder: _edit(folder, "intercept", lambda a: a + 1e6),
    "dual_coef = NaN": lambda folder: _edit(folder, "dual_coef", lambda a: np.full_like(a, np.nan)),
    "truncated": lambda folder: (folder / "bundle.npz").write_bytes((folder / "bundle.npz").read_bytes()[:1000]),
    "manifest edited": lambda folder: (folder / "manifest.json").write_text(
        (folder / "manifest.json").read_text().replace('"rolling_window": 3', '"rolling_window": 4')),
}


@pytest.fixture()
def registered(tmp_path: Path) -> dict:
    from fleetscore.training import registry

    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", f"fleet-{uuid.uuid4().hex[:8]}"
    bundle, _, _ = random_fleet(seed=3, models=5, features=("value", "spread"), rolling_window=3)
    bundle.save(tmp_path / "bundle")
    version, _ = registry.register_release(uri, name, tmp_path / "bundle", "r1", {"nu": 0.01}, {"models": 5.0}, {})
    return {"uri": uri, "name": name, "version": version, "digest": bundle_digest(tmp_path / "bundle"),
            "cache": tmp_path / "cache"}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_cached_bundle_is_refused_naming_the_version(registered: dict, edit: str) -> None:
    from fleetscore.training import registry

    resolved = registry.resolve_release(registered["uri"], registered["name"], "1", cache_dir=registered["cache"])
    assert resolved.tags[BUNDLE_SHA_TAG] == registered["digest"]
    ReleaseBundle.load(resolved.bundle_dir)
    EDITS[edit](resolved.bundle_dir)
    with pytest.raises(RegistryError) as caught:
        registry.resolve_release(registered["uri"], registered["name"], "1", cache_dir=registered["cache"])
    message = str(caught.value)
    assert message.startswith(f"release v1 of {registered['name']}: the bundle at ")
    assert "does not match the SHA-256 recorded at registration" in message and "\n" not in message


def test_an_edited_stored_bundle_is_refused_on_download(registered: dict, tmp_path: Path) -> None:
    from urllib.parse import urlparse

    from mlflow.tracking import MlflowClient

    from fleetscore.training import registry

    uri = MlflowClient(registered["uri"]).get_model_version_download_uri(registered["name"], "1")
    stored = Path(urlparse(uri).path) / "artifacts" / "bundle"
    assert (stored / "bundle.npz").is_file(), uri
    EDITS["intercept += 1e6"](stored)
    with pytest.raises(RegistryError, match="does not match the SHA-256"):
        registry.resolve_release(registered["uri"], registered["name"], "1", cache_dir=tmp_path / "fresh")


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_shard_refuses_a_bundle_folder_that_does_not_match(tmp_path: Path, edit: str) -> None:
    bundle, _, _ = random_fleet(seed=4, models=3, features=("value",), rolling_window=3)
    bundle.save(tmp_path / "b")
    digest = bundle_digest(tmp_path / "b")
    EDITS[edit](tmp_path / "b")
    with pytest.raises(RegistryError, match=r"release v7: the bundle at .* does not match"):
        load_bundle(str(tmp_path / "b"), digest, "release v7")



def test_an_unreadable_bundle_is_one_line(tmp_path: Path) -> None:
    bundle, _, _ = random_fleet(seed=6, models=2, features=("value",), rolling_window=3)
    bundle.save(tmp_path / "b")
    EDITS["truncated"](tmp_path / "b")
    with pytest.raises(RegistryError, match="unreadable release bundle") as caught:
        ReleaseBundle.load(tmp_path / "b")
    assert "\n" not in str(caught.value)
