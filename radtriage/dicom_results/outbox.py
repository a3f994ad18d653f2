"""Results into the PACS by STOW-RS (PS3.18 10.5), from a durable outbox, never in the way of the priority.

1. `DicomResultsOutbox.on_event` is a job-event listener: when a job completes (its result and heatmaps are
   stored, and the priority has long gone to the RIS and the EHR), it adds the job to ``dicom_results_outbox``.
   That is one row insert; nothing is built or sent on the pipeline's thread.
2. `DicomResultsSender`, a background thread, takes what is due: it reads the result, the heatmaps and the
   scored image (from the study source the pipeline used), builds the TID 1500 SR and one Secondary Capture
   per heatmap (`objects`), and stores them with one STOW-RS request. Success marks the row sent and leaves a
   ``message-sent`` audit record. A failure (PACS down, timeout, 5xx) is tried again later with exponential
   backoff; a 4xx answer (the PACS refuses the objects) parks the row for a person, like an HL7 AE. The
   objects' UIDs derive from the job id, so a resend replaces what a half-successful attempt stored.

Rows survive a restart; the sender picks up whatever is pending when it starts.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import requests
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmread
from retrying import RetryError  # dicomweb-client's retry library
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..app.core.domain import JobEvent, JobState
from ..app.core.errors import TriageError
from ..app.core.service import TriageService
from ..app.storage.database import as_utc
from ..app.storage.dicom_results_tables import dicom_results_outbox
from ..compliance.audit import MESSAGE_SENT, AuditOutcome, AuditRecord
from . import objects

log = logging.getLogger(__name__)

PENDING: Final = "pending"
SENT: Final = "sent"
PARKED: Final = "parked"


class DicomResultsOutbox:
    """The rows of jobs whose results are to be sent, and the job-event listener that adds them."""

    def __init__(self, engine: Engine, *, on_added: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.on_added = on_added

    def on_event(self, event: JobEvent) -> None:
        if event.to_state is JobState.COMPLETED and self.add(event.job_id, event.at):
            if self.on_added is not None:
                self.on_added()

    def add(self, job_id: str, at: datetime) -> bool:
        """Queue `job_id`; False (nothing changes) when it is queued or sent already."""
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    insert(dicom_results_outbox).values(
                        job_id=job_id, state=PENDING, attempts=0, next_attempt_at=at, created_at=at, updated_at=at
                    )
                )
        except IntegrityError:
            return False
        return True

    def due(self, now: datetime, limit: int = 10) -> list[str]:
        query = (
            select(dicom_results_outbox.c.job_id)
            .where(dicom_results_outbox.c.state == PENDING, dicom_results_outbox.c.next_attempt_at <= now)
            .order_by(dicom_results_outbox.c.next_attempt_at)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [row[0] for row in connection.execute(query)]

    def next_due(self) -> datetime | None:
        query = select(dicom_results_outbox.c.next_attempt_at).where(dicom_results_outbox.c.state == PENDING)
        with self.engine.connect() as connection:
            times = [as_utc(row[0]) for row in connection.execute(query)]
        return min((t for t in times if t is not None), default=None)

    def state(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(dicom_results_outbox).where(dicom_results_outbox.c.job_id == job_id)
            ).first()
        return dict(row._mapping) if row is not None else None

    def mark(self, job_id: str, at: datetime, **values: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(dicom_results_outbox)
                .where(dicom_results_outbox.c.job_id == job_id)
                .values(updated_at=at, **values)
            )


class StowError(Exception):
    """The PACS did not store the objects. `permanent` when it refused them (4xx): sending again will not help."""

    def __init__(self, text: str, *, permanent: bool) -> None:
        super().__init__(text)
        self.permanent = permanent


class StowClient:
    """STOW-RS with dicomweb-client (one request per job: the SR and its captures). Its own retries are off:
    the outbox retries, with backoff, without holding a thread for the client's default 30 s."""

    def __init__(self, url: str, *, auth: tuple[str, str] | None = None, timeout: float = 30.0) -> None:
        session = requests.Session()
        session.auth = auth
        self._client = DICOMwebClient(url.rstrip("/"), session=session)
        self._client.set_http_retry_params(retry=False)
        self._timeout = timeout

    def store(self, datasets: Sequence[Dataset]) -> None:
        try:
            self._client.store_instances(list(datasets))
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            # 4xx: the objects or the request were refused (sending them again will not help); 5xx: later.
            permanent = 400 <= status < 500 and status not in (408, 429)
            raise StowError(f"STOW-RS answered HTTP {status}", permanent=permanent) from None
        except (requests.RequestException, RetryError) as error:
            raise StowError(f"PACS unreachable ({type(error).__name__})", permanent=False) from None


class DicomResultsSender:
    """Builds and sends what the outbox holds (see the module docstring)."""

    def __init__(
        self,
        outbox: DicomResultsOutbox,
        service: TriageService,
        client: StowClient,
        *,
        record_audit: Callable[[AuditRecord], Any],
        retry_base: float = 10.0,
        retry_max: float = 600.0,
    ) -> None:
        self.outbox = outbox
        self.service = service
        self.client = client
        self.record_audit = record_audit
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="radtriage-dicom-results", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.send_due()
            except Exception as error:  # the sender must survive anything; the outbox keeps the work
                log.error("DICOM results sender: %s", type(error).__name__)
            next_due = self.outbox.next_due()
            wait = 30.0 if next_due is None else max(0.0, (next_due - datetime.now(UTC)).total_seconds())
            self._wake.wait(timeout=min(wait, 30.0))
            self._wake.clear()

    def send_due(self) -> int:
        """Send every job that is due now; the number sent."""
        sent = 0
        for job_id in self.outbox.due(datetime.now(UTC)):
            sent += self.send(job_id)
        return sent

    def send(self, job_id: str) -> bool:
        row = self.outbox.state(job_id) or {}
        attempts = int(row.get("attempts") or 0) + 1
        try:
            datasets, patient_ref = self._objects(job_id)
            self.client.store(datasets)
        except (StowError, TriageError) as error:
            now = datetime.now(UTC)
            permanent = isinstance(error, StowError) and error.permanent
            text = str(error) if isinstance(error, StowError) else f"cannot build the objects: {error.code.value}"
            delay = min(self.retry_base * 2 ** (attempts - 1), self.retry_max)
            self.outbox.mark(
                job_id,
                now,
                attempts=attempts,
                state=PARKED if permanent else PENDING,
                next_attempt_at=now + timedelta(seconds=delay),
                last_error=text[:200],
            )
            log.warning(
                "DICOM results for job %s not stored (%s); %s", job_id, text, "parked" if permanent else "will retry"
            )
            return False
        now = datetime.now(UTC)
        self.outbox.mark(job_id, now, attempts=attempts, state=SENT, sent_at=now, last_error=None)
        self.record_audit(
            AuditRecord(
                MESSAGE_SENT,
                outcome=AuditOutcome.SUCCESS,
                entities=tuple(f"urn:oid:{d.SOPInstanceUID}" for d in datasets),
                patient_ref=patient_ref,
                details={"destination": "PACS (STOW-RS)", "objects": str(len(datasets)), "job": job_id},
            )
        )
        log.info("DICOM results for job %s stored in the PACS (%d objects)", job_id, len(datasets))
        return True

    def _objects(self, job_id: str) -> tuple[list[Dataset], str]:
        """The SR and the heatmap captures of a job, and its patient (for the audit record)."""
        job = self.service.job(job_id)
        order = self.service.order(job.order_id)
        result = self.service.result(job_id)
        if result is None:
            raise StowError("the job has no result", permanent=True)
        source = self._scored_image(order.study_instance_uid, result.sop_instance_uid)
        datasets: list[Dataset] = [objects.measurement_report(source, order, result)]
        for n, label in enumerate(self.service.store.heatmap_labels(job_id), start=1):
            png = self.service.store.heatmap_png(job_id, label)
            if png is not None:
                datasets.append(objects.heatmap_capture(source, result, n, label, png))
        return datasets, order.patient_ref

    def _scored_image(self, study_uid: str, sop_uid: str) -> Dataset:
        for instance in self.service.source.find_instances(study_uid):
            if instance.sop_instance_uid == sop_uid:
                return dcmread(io.BytesIO(self.service.source.retrieve_instance(instance)), stop_before_pixels=True)
        raise StowError("the scored image is no longer in the archive", permanent=False)
