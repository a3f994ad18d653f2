"""Model fixtures: the placeholder artefact and a scorer for it are made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from radtriage.model.placeholder import ensure_placeholder
from radtriage.model.scorer import XrvScorer


@pytest.fixture(scope="session")
def placeholder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_placeholder(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def placeholder_scorer(placeholder_dir: Path) -> XrvScorer:
    # max_threads=None: leave torch's thread setting alone in the shared test process.
    return XrvScorer.from_artefact(placeholder_dir, max_threads=None)
