"""Great Expectations, imported without loading two libraries it only needs for features fleetscore does
not use.

GX 1.x imports every built-in expectation when it is imported. Two of them (the KL-divergence and
KS-test expectations) import ``altair`` and ``scipy.stats`` at module level, for their statistics and
plots: about half of GX's import time (measured 4.7-5.0 s -> 2.6-3.0 s in a process that already has
numpy, pandas and SQLAlchemy). fleetscore's suites use neither, so this module puts a stand-in for each
in ``sys.modules`` before importing GX. A stand-in imports the real module the first time one of its
attributes is used, so code that does use them (GX's own, scikit-learn's) still works.

Every module of this package imports GX from here.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

DEFERRED_MODULES = ("altair", "scipy.stats")


class _Deferred(types.ModuleType):
    """Stands in ``sys.modules`` for a module until one of its attributes is used, then imports it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__spec__ = None  # what the import system checks of a module it finds in sys.modules

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
            importlib.import_module(self.__name__)
        return getattr(sys.modules[self.__name__], attr)


def defer_unused_modules() -> None:
    """Put a stand-in for each of :data:`DEFERRED_MODULES` that is not imported yet."""
    for name in DEFERRED_MODULES:
        if name not in sys.modules:
            sys.modules[name] = _Deferred(name)


defer_unused_modules()

import great_expectations as gx  # noqa: E402 - after the stand-ins, on purpose
import great_expectations.expectations as gxe  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.exceptions import GreatExpectationsError  # noqa: E402

__all__ = ["DataContextConfig", "GreatExpectationsError", "InMemoryStoreBackendDefaults", "ProgressBarsConfig",
           "gx", "gxe"]
