"""Importing the repository's scripts (train.py, benchmarks/*.py), which live outside any package, in tests."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: Path, name: str) -> ModuleType:
    """Execute the Python file `path` as a module named `name` and return it.

    The module is registered in `sys.modules` first, as `importlib` recommends: worker processes that pickle its
    functions (benchmarks/kernel_report.py) look it up there by name. The script's directory goes on `sys.path`, as
    `python path` puts it there: the benchmark scripts import their shared helpers as `common`.
    """
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
