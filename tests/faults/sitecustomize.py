"""Installs the test's fault in every Python process that imports pipeline.train (tests only)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path
from types import ModuleType

if os.environ.get("ITERCONV_FAULT_EPOCH"):

    class _PatchAfterImport(importlib.abc.MetaPathFinder):
        """Lets pipeline.train import as usual, then patches it."""

        def find_spec(self, name: str, path: object, target: object = None) -> object:
            if name != "pipeline.train":
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(name, path)  # type: ignore[arg-type]
            if spec is None or spec.loader is None:
                return spec
            execute = spec.loader.exec_module

            def exec_module(module: ModuleType) -> None:
                execute(module)
                sys.path.insert(0, str(Path(__file__).resolve().parent))
                from iterconv_faults import fail_as_epoch_starts

                marker = Path(os.environ["ITERCONV_FAULT_MARKER"])
                fail_as_epoch_starts(int(os.environ["ITERCONV_FAULT_EPOCH"]), marker)

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, _PatchAfterImport())
