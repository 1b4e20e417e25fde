"""Installs the test's faults in every Python process that imports pipeline (tests only)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path
from types import ModuleType

if os.environ.get("ITERCONV_FAULT_EPOCH") or os.environ.get("ITERCONV_FAULTS"):

    def _patch(name: str, module: ModuleType) -> None:
        """Apply the armed faults to a freshly executed pipeline module."""
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import iterconv_faults as faults

        if name == "pipeline.train":
            if os.environ.get("ITERCONV_FAULT_EPOCH"):
                marker = Path(os.environ["ITERCONV_FAULT_MARKER"])
                faults.fail_as_epoch_starts(int(os.environ["ITERCONV_FAULT_EPOCH"]), marker)
            faults.hold_before_epochs(module)
        elif name == "pipeline.tracking":
            faults.fail_run_logging(module)

    class _PatchAfterImport(importlib.abc.MetaPathFinder):
        """Lets pipeline.train and pipeline.tracking import as usual, then patches them."""

        def find_spec(self, name: str, path: object, target: object = None) -> object:
            if name not in ("pipeline.train", "pipeline.tracking"):
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)  # type: ignore[arg-type]
            if spec is None or spec.loader is None:
                return spec
            execute = spec.loader.exec_module

            def exec_module(module: ModuleType) -> None:
                execute(module)
                _patch(name, module)

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, _PatchAfterImport())
