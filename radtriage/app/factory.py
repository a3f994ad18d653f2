"""Composition root: the only place that knows every adapter. Nothing is created at import time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Settings, load_settings
from .core.ports import ImageScorer, StudySource
from .core.service import TriageService
from .jobs import InlineJobQueue
from .storage import SqlOrderStore, create_database_engine, migrate

if TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

#: The default model shipped inside the package (trained by radtriage's own pipeline), if present.
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "model" / "default"


@dataclass
class Components:
    settings: Settings
    engine: Engine
    store: SqlOrderStore
    queue: InlineJobQueue
    service: TriageService

    def start(self) -> None:
        """Start the workers and re-queue what a previous process left unfinished."""
        self.queue.start()
        resumed = self.service.resume_unfinished()
        if resumed:
            log.info("re-queued %d unfinished job(s)", resumed)

    def close(self) -> None:
        self.queue.stop()
        self.engine.dispose()


def build_study_source(settings: Settings) -> StudySource:
    if settings.study_source == "dicomweb":
        from ..imaging.dicomweb_source import DicomwebStudySource

        if not settings.dicomweb_url:
            raise ValueError("study_source is dicomweb but dicomweb_url is not set")
        return DicomwebStudySource(
            settings.dicomweb_url,
            username=settings.dicomweb_username or None,
            password=settings.dicomweb_password or None,
            timeout=settings.dicomweb_timeout,
            attempts=settings.dicomweb_attempts,
        )
    if settings.study_source == "folder":
        from ..imaging.folder_source import FolderStudySource

        folder = Path(settings.study_folder or Path(settings.home) / "studies")
        folder.mkdir(parents=True, exist_ok=True)
        return FolderStudySource(folder)
    raise ValueError(f"unknown study_source {settings.study_source!r} (folder or dicomweb)")


def resolve_model_path(settings: Settings) -> Path:
    """The configured model, else the shipped default, else the untrained placeholder (created on first use)."""
    if settings.model:
        return Path(settings.model)
    if (SHIPPED_MODEL / "manifest.json").exists():
        return SHIPPED_MODEL
    from ..model.placeholder import ensure_placeholder

    return ensure_placeholder(Path(settings.home) / "models")


def model_scorer_factory(settings: Settings) -> Callable[[], ImageScorer]:
    def load() -> ImageScorer:
        from ..model.scorer import XrvScorer  # torch is imported only by processes that score

        return XrvScorer.from_artefact(resolve_model_path(settings))

    return load


def build_components(
    settings: Settings | None = None,
    *,
    scorer_factory: Callable[[], ImageScorer] | None = None,
    study_source: StudySource | None = None,
) -> Components:
    from ..imaging.selection import select_instance
    from ..model.policy import load_policy

    settings = settings or load_settings()
    engine = create_database_engine(settings.resolved_database_url())
    migrate(engine)
    store = SqlOrderStore(engine)
    queue = InlineJobQueue(settings.workers)
    service = TriageService(
        store=store,
        queue=queue,
        source=study_source or build_study_source(settings),
        selector=select_instance,
        policy=load_policy(settings.policy or None),
        scorer=scorer_factory or model_scorer_factory(settings),
    )
    queue.bind(service.run_job)
    return Components(settings, engine, store, queue, service)


def create_app(settings: Settings | None = None, components: Components | None = None) -> Flask:
    """The WSGI application: the FHIR door (and, later, the web pages) on top of one set of components."""
    from flask import Flask

    from ..fhir.api import fhir_blueprint

    components = components or build_components(settings)
    app = Flask("radtriage")
    app.extensions["radtriage"] = components
    base_url = f"{components.settings.base_url.rstrip('/')}/fhir" if components.settings.base_url else None
    app.register_blueprint(fhir_blueprint(components.service, base_url=base_url), url_prefix="/fhir")
    return app
