"""Module paths of earlier releases, kept importable (with a DeprecationWarning, once).

The package was laid out flat before 0.2 (``sae_lens_tokenized.unigrams``,
``.offline``, ``.saebench``, ...). Each old path now names a module assembled from the
modules that hold its names today, so ``from sae_lens_tokenized.offline import
load_smollm2`` keeps working.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

#: old module (under sae_lens_tokenized) -> the modules that hold its names now
MOVED = {
    "saes.lookup": ("lookup.config", "lookup.ids", "lookup.mixin", "lookup.bigrams", "lookup.sparse",
                    "lookup.strategies"),
    "lookup_stats": ("lookup_init.statistics", "lookup.ids"),
    "unigrams": ("lookup.strategies", "lookup_init.unigrams", "lookup_init.fit", "models"),
    "training.optim": ("lookup.sparse",),
    "compare": ("workbench.settings", "workbench.data", "workbench.runs", "workbench.report"),
    "demo": ("workbench.demo",),
    "hub": ("integrations.hub",),
    "convert": ("integrations.convert",),
    "saebench": ("integrations.saebench",),
    "evals": ("integrations.evals",),
    "offline": ("integrations.offline", "_paths"),
    "plotting": ("analysis.plotting",),
}
PACKAGE = __name__.rpartition(".")[0]


class _Moved(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        for source in self.__sources__:
            module = importlib.import_module(f"{PACKAGE}.{source}")
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        old = fullname.removeprefix(PACKAGE + ".")
        if fullname.startswith(PACKAGE + ".") and old in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        old = spec.name.removeprefix(PACKAGE + ".")
        warnings.warn(f"{spec.name} moved: import from {', '.join(PACKAGE + '.' + s for s in MOVED[old])}",
                      DeprecationWarning, stacklevel=3)
        module = _Moved(spec.name)
        module.__sources__ = MOVED[old]  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
