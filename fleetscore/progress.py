"""The one progress callback type: ``on_progress(done, total)``, called as work items complete."""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[int, int], None]
