"""Which model a ``Device/<id>`` stands for, so that the Device every result references always resolves.

A model is identified by its weights' sha256; its Device id is ``model-<first 32 hex digits>``
(`radtriage.compliance.provenance.device_id`). A model that scored a study stays readable after it is replaced,
so the catalogue is what the stored results remember (`OrderStore.find_model`), not what the scoring worker has
loaded (the web process never loads the model).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from ..app.core.domain import ModelIdentity
from ..app.core.ports import OrderStore

#: Finds the model for a Device id, or None.
ModelLookup = Callable[[str], ModelIdentity | None]

_DEVICE_ID: Final = re.compile(r"model-([0-9a-f]{32})")


def models_from_results(store: OrderStore) -> ModelLookup:
    """A `ModelLookup` over the models that produced the stored results."""

    def find(device: str) -> ModelIdentity | None:
        match = _DEVICE_ID.fullmatch(device)
        return store.find_model(match.group(1)) if match else None

    return find
