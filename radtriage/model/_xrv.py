"""The one place that imports torchxrayvision.

torchxrayvision's ``models`` module calls ``warnings.filterwarnings("ignore")`` when it is imported, which would
silence every warning in the whole process (the design guide lists this among the habits to avoid). Importing it
inside ``warnings.catch_warnings()`` restores the process's warning filters afterwards. The import is also lazy:
it pulls in torch, torchvision, pandas and scikit-image (about two seconds), which only scoring and training
processes need.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType


@functools.cache
def import_xrv() -> ModuleType:
    """The ``torchxrayvision`` module, imported once without leaking its global warning filter."""
    with warnings.catch_warnings():
        return importlib.import_module("torchxrayvision")
