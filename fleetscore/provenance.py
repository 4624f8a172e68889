"""Which code runs: the git commit of the checkout, when there is one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def git_commit(cwd: str | os.PathLike[str] = _PACKAGE_DIR, *, short: bool = False) -> str | None:
    """The commit ``HEAD`` of the git checkout at ``cwd`` (the package's own by default); None outside one."""
    args = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=cwd, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None
