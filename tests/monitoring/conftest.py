"""Fixtures of the monitoring tests: the real service (SQLite or PostgreSQL), a DICOM folder as the archive, the
shipped default model behind the monitoring scorer, and the FHIR door wired with monitoring as the lead's
`create_app` wires it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from pydicom import dcmread

from radtriage.app.config import Settings
from radtriage.app.core.domain import ImagingOrder, Job, Priority
from radtriage.app.factory import Components, build_components, create_app
from radtriage.imaging.folder_source import FolderStudySource
from radtriage.model.registry import SHIPPED_DEFAULT
from radtriage.model.scorer import XrvScorer
from radtriage.monitoring.wiring import Monitoring, install_monitoring
from tests.support.data import pydicom_data_dir


@dataclass(frozen=True)
class Archive:
    root: Path
    chest_uid: str


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("archive")
    shutil.copy(pydicom_data_dir() / "RG1_J2KI.dcm", root / "RG1_J2KI.dcm")
    return Archive(root, str(dcmread(root / "RG1_J2KI.dcm", stop_before_pixels=True).StudyInstanceUID))


@pytest.fixture(scope="session")
def default_scorer() -> XrvScorer:
    # The shipped default model (trained, not the placeholder: the placeholder never drafts).
    return XrvScorer.from_artefact(SHIPPED_DEFAULT, max_threads=None)


@dataclass
class Stack:
    components: Components
    monitoring: Monitoring

    @property
    def engine(self) -> Any:
        return self.components.engine

    def order(self, n: int = 1, *, uid: str, **fields: Any) -> tuple[ImagingOrder, Job]:
        fields.setdefault("requested_priority", Priority.ROUTINE)
        order = ImagingOrder(
            study_instance_uid=uid, patient_ref=f"Patient/p{n}", source="fhir", source_key=f"ServiceRequest/sr{n}",
            service_request_ref=f"ServiceRequest/sr{n}", accession_number=f"ACC{n}", **fields,
        )
        stored, job, _ = self.components.service.submit_order(order)
        return stored, job

    def score(self, n: int = 1, *, uid: str, **fields: Any) -> Job:
        _, job = self.order(n, uid=uid, **fields)
        return self.components.service.run_job(job.id)


def make_stack(database_url: str, home: Path, archive: Archive, scorer: XrvScorer, **monitoring: Any) -> Stack:
    """The real composition root: monitoring settings are ordinary service settings."""
    settings = Settings(home=str(home), database_url=database_url, **monitoring)
    components = build_components(settings, scorer_factory=lambda: scorer, study_source=FolderStudySource(archive.root))
    assert components.monitoring is not None
    return Stack(components, install_monitoring(components))


@pytest.fixture
def stack_factory(database_url: str, tmp_path: Path, archive: Archive, default_scorer: XrvScorer):
    built: list[Stack] = []

    def make(**monitoring: Any) -> Stack:
        stack = make_stack(database_url, tmp_path / f"home{len(built)}", archive, default_scorer, **monitoring)
        built.append(stack)
        return stack

    yield make
    for stack in built:
        stack.components.close()


def monitored_app(stack: Stack) -> Flask:
    """The real WSGI application over the stack's components (FHIR door, monitoring endpoints, web pages)."""
    return create_app(components=stack.components)


def seed_result(stack: Stack, n: int, probabilities: dict[str, float], *, threshold: float = 0.5,
                at: Any = None, **order_fields: Any) -> str:
    """A scored study without running the model: the order through the service, the result through the store's
    transitions (as the worker records it). Returns the job id."""
    from datetime import UTC, datetime

    from radtriage.app.core.domain import FindingScore, JobState, ModelIdentity, TriageResult
    from radtriage.app.core.pipeline import advance

    manifest = stack.monitoring.manifest()
    _, job = stack.order(n, uid=order_fields.pop("uid", f"1.2.826.0.1.3680043.10.99.{n}"), **order_fields)
    when = at or datetime.now(UTC)
    states = [JobState.FETCHING, JobState.SELECTED, JobState.PREPROCESSED, JobState.SCORING]
    for state in states:
        job = stack.components.store.record_transition(advance(job, state, when))
    result = TriageResult(
        job_id=job.id,
        findings=tuple(FindingScore(label, p, threshold) for label, p in probabilities.items()),
        priority=job.priority,
        model=ModelIdentity(manifest.name, manifest.version, manifest.weights_sha256),
        series_instance_uid="1.2.3.4",
        sop_instance_uid=f"1.2.3.4.{n}",
        created_at=when,
    )
    event = advance(job, JobState.SCORED, when)
    job = stack.components.store.record_transition(event, priority=job.priority, result=result)
    stack.monitoring.annotator(event)  # the listener, as the service calls it after the commit
    for state in (JobState.PUBLISHING, JobState.COMPLETED):
        job = stack.components.store.record_transition(advance(job, state, when))
    return job.id
