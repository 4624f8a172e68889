"""Which release a scoring run uses: the ``--release`` reference, its default, and its bundle folder.

A reference is a registry alias or version (resolved through :mod:`training.registry`) or
``path:FOLDER``, a bundle folder scored without the registry. The default (``scoring.release``) is
applied here and nowhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetscore.errors import ScoringError
from fleetscore.pipelines.settings import Settings


@dataclass(frozen=True)
class LocalRelease:
    """A release bundle folder scored without the registry (``--release path:FOLDER``, e.g. a candidate
    from ``fleetscore train``): version 0 unless the bundle's manifest names one."""

    version: int
    bundle_dir: Path
    tags: dict[str, str]


def release_ref(settings: Settings, release: str | None) -> str:
    """The release reference a run uses: ``release`` when given, else ``scoring.release``."""
    return release or settings.scoring.release


def resolve_release(settings: Settings, ref: str) -> Any:
    """The release ``ref`` names (``version``, ``bundle_dir``, ``tags``), fetched from the registry if needed."""
    if ref.startswith("path:"):
        folder = Path(ref[len("path:"):]).resolve()
        if not (folder / "manifest.json").is_file():
            raise ScoringError(f"--release {ref}: {folder} is not a release bundle folder (no manifest.json)")
        manifest = json.loads((folder / "manifest.json").read_text())
        version = manifest.get("version")
        return LocalRelease(version if isinstance(version, int) else 0, folder, {"source": str(folder)})
    from fleetscore.training.registry import resolve_release as resolve_in_registry

    return resolve_in_registry(settings.tracking_uri, settings.training.model_name, ref)
