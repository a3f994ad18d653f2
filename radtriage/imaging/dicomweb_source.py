"""A `StudySource` over DICOMweb (PS3.18): QIDO-RS to list a study's instances, WADO-RS to fetch one.

Errors are mapped onto the service's codes, with no UIDs or other patient data in the detail:

=========================================================  ====================================
what happened                                              code
=========================================================  ====================================
connection refused / reset, DNS failure, timeout           PACS_UNAVAILABLE (retryable)
HTTP 5xx, 429, 408                                         PACS_UNAVAILABLE (retryable)
HTTP 401 / 403 (the archive refused our credentials)       PACS_UNAVAILABLE, detail says so
HTTP 404, an empty QIDO-RS result, an invalid UID          STUDY_NOT_FOUND
an instance that is not readable Part 10 (no preamble)     UNREADABLE_IMAGE (not retryable)
any other HTTP status, an answer that is not DICOM         PACS_UNAVAILABLE
=========================================================  ====================================

A refused login is reported as the archive being unavailable (retryable), not as a problem with the order:
nothing about the order has to change, and the jobs succeed once the configuration is fixed.

Each request is bounded (a connect timeout, a read timeout, `attempts` tries), and a `CircuitBreaker` stops
asking an archive that failed several requests in a row: for a cool-down period every job fails at once as
PACS_UNAVAILABLE (and is retried later by radtriage.app.retry) instead of holding a worker for the full timeout,
so one dead PACS cannot occupy every worker. After the cool-down one request is let through to test it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from io import BytesIO
from typing import TypeVar

import requests
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmwrite
from pydicom.errors import InvalidDicomError
from retrying import RetryError  # dicomweb-client's retry library: raised when every attempt got a retryable status

from radtriage.app.core.domain import InstanceInfo
from radtriage.app.core.errors import ErrorCode, TriageError
from radtriage.app.core.uids import is_dicom_uid

from .attributes import instance_info_from_dataset

#: Instance-level attributes the selection rules need (PS3.18 10.6.1.2.1 includefield).
INSTANCE_FIELDS = [
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "SeriesDescription",
    "SOPClassUID",
    "ImageLaterality",
]
#: Series-level attributes, asked for separately when the archive leaves them out of instance-level results
#: (PS3.18 only requires an origin server to return instance-level attributes there).
SERIES_FIELDS = ["Modality", "BodyPartExamined", "SeriesDescription"]

#: HTTP statuses worth one immediate retry inside a request: the archive says "busy, try again".
RETRYABLE_STATUSES = (
    HTTPStatus.REQUEST_TIMEOUT,
    HTTPStatus.TOO_MANY_REQUESTS,
    HTTPStatus.BAD_GATEWAY,
    HTTPStatus.SERVICE_UNAVAILABLE,
    HTTPStatus.GATEWAY_TIMEOUT,
)
#: Pause before the second attempt, in milliseconds. dicomweb-client waits multiplier * 2**attempt.
RETRY_BACKOFF_MULTIPLIER_MS = 250

#: The longest wait for a TCP connection to the archive: a host that drops packets should not cost a full read timeout.
MAX_CONNECT_TIMEOUT_S = 5.0

T = TypeVar("T")


class DicomwebStudySource:
    """Studies from a DICOMweb origin server (Orthanc, dcm4chee, a cloud archive, ...).

    `url` is the DICOMweb root, e.g. ``http://pacs:8042/dicom-web``. `timeout` bounds the wait for a connection
    and for each read of the answer, in seconds; `attempts` is how many times one request is tried in all.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        attempts: int = 2,
        breaker_failures: int = 5,
        breaker_cooldown: float = 30.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.attempts = attempts
        session = requests.Session()
        if username:
            session.auth = (username, password or "")
        # The client passes `timeout` to every requests call (connect timeout and time between bytes read).
        # Without it a PACS that accepts the connection but never answers would hold a worker forever.
        # A separate, shorter connect timeout: an unreachable host is known sooner than a slow one.
        self._client = DICOMwebClient(
            self.url, session=session, timeout=(min(timeout, MAX_CONNECT_TIMEOUT_S), timeout)
        )
        self.breaker = CircuitBreaker(breaker_failures, breaker_cooldown)
        # dicomweb-client's default is 5 attempts with exponential waits (2 + 4 + 8 + 16 s = 30 s) on any
        # connection error or busy status, on top of each attempt's own timeout. A job that cannot fetch is not
        # lost: it fails as PACS_UNAVAILABLE, which is retryable, and is run again later. So within one request
        # we try `attempts` times (default 2: one quick retry for a dropped connection or a restarting PACS)
        # with a short pause, and a dead PACS is reported in about attempts * timeout seconds at most.
        self._client.set_http_retry_params(
            retry=attempts > 1,
            max_attempts=attempts,
            wait_exponential_multiplier=RETRY_BACKOFF_MULTIPLIER_MS,
            retriable_error_codes=RETRYABLE_STATUSES,
        )

    # ------------------------------------------------------------------ StudySource

    def find_instances(self, study_instance_uid: str) -> list[InstanceInfo]:
        """QIDO-RS ``GET {root}/studies/{uid}/instances`` (PS3.18 10.6); series attributes filled in if missing."""
        _require_valid_uids(study_instance_uid)
        results = self._call(
            # One request, no paging (get_remaining): a server that ignores `offset` would make the client loop
            # forever, and a study has far fewer instances than any archive's page size.
            lambda: self._client.search_for_instances(study_instance_uid, fields=INSTANCE_FIELDS),
            what="search for the study's instances",
        )
        datasets = _datasets_from_json(results, "search for the study's instances")
        if not datasets:
            raise TriageError(ErrorCode.STUDY_NOT_FOUND, "the image archive has no instances for the study")
        for ds in datasets:
            # The study UID is in the URL, so some archives leave it out of each result.
            ds.setdefault("StudyInstanceUID", study_instance_uid)
        if any("Modality" not in ds for ds in datasets):
            self._fill_series_attributes(study_instance_uid, datasets)
        try:
            instances = [instance_info_from_dataset(ds) for ds in datasets]
        except KeyError as exc:
            raise TriageError(
                ErrorCode.PACS_UNAVAILABLE, f"the image archive's search result lacks {exc.args[0]}"
            ) from None
        return sorted(instances, key=lambda i: (i.series_instance_uid, i.sop_instance_uid))

    def retrieve_instance(self, instance: InstanceInfo) -> bytes:
        """WADO-RS ``GET .../instances/{uid}`` (PS3.18 10.4) in the stored transfer syntax, as Part 10 bytes.

        Asking for ``transfer-syntax=*`` lets the archive send what it stored (JPEG 2000, JPEG-LS, ...), which is
        decoded here; the default (Explicit VR Little Endian) would make the archive decompress, and some cannot.
        """
        _require_valid_uids(instance.study_instance_uid, instance.series_instance_uid, instance.sop_instance_uid)
        ds = self._call(
            lambda: self._client.retrieve_instance(
                instance.study_instance_uid,
                instance.series_instance_uid,
                instance.sop_instance_uid,
                media_types=(("application/dicom", "*"),),
            ),
            what="retrieve the instance",
        )
        buffer = BytesIO()
        try:
            dcmwrite(buffer, ds, enforce_file_format=True)
        except Exception as exc:
            detail = f"the retrieved instance could not be written as DICOM ({type(exc).__name__})"
            raise TriageError(ErrorCode.UNREADABLE_IMAGE, detail) from None
        return buffer.getvalue()

    # ------------------------------------------------------------------ helpers

    def _fill_series_attributes(self, study_instance_uid: str, datasets: list[Dataset]) -> None:
        """Copy series-level attributes onto instance results that lack them (one QIDO-RS series query)."""
        series_results = self._call(
            lambda: self._client.search_for_series(study_instance_uid, fields=SERIES_FIELDS),
            what="search for the study's series",
        )
        by_uid: dict[str, Dataset] = {}
        for series in _datasets_from_json(series_results, "search for the study's series"):
            if series.get("SeriesInstanceUID"):
                by_uid[str(series.SeriesInstanceUID)] = series
        for ds in datasets:
            series_ds = by_uid.get(str(ds.get("SeriesInstanceUID", "")))
            if series_ds is None:
                continue
            for keyword in SERIES_FIELDS:
                if keyword not in ds and keyword in series_ds:
                    ds[keyword] = series_ds[keyword]

    def _call(self, request: Callable[[], T], *, what: str) -> T:
        """One client call through the circuit breaker. Failures that say the archive is down or overloaded count
        against it; an answer (even 404) shows the archive is up."""
        wait = self.breaker.refusal()
        if wait is not None:
            raise TriageError(
                ErrorCode.PACS_UNAVAILABLE,
                f"the image archive failed {self.breaker.failures} requests in a row; not asked to {what} "
                f"for another {wait:.0f} s",
            )
        try:
            answer = self._call_once(request, what=what)
        except TriageError as err:
            if err.code is ErrorCode.PACS_UNAVAILABLE:
                self.breaker.failed()
            else:
                self.breaker.succeeded()
            raise
        except BaseException:
            self.breaker.succeeded()  # not the archive's fault; free the trial slot
            raise
        self.breaker.succeeded()
        return answer

    def _call_once(self, request: Callable[[], T], *, what: str) -> T:
        """Run one client call; its exceptions become `TriageError`s with no UIDs in them (URLs contain UIDs)."""
        try:
            return request()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            raise _error_for_status(status, what) from None
        except RetryError as exc:
            status = getattr(exc.last_attempt.value, "status_code", 0)
            raise TriageError(
                ErrorCode.PACS_UNAVAILABLE,
                f"the image archive stayed busy (HTTP {status}) after {self.attempts} attempts to {what}",
            ) from None
        except requests.Timeout:
            raise TriageError(
                ErrorCode.PACS_UNAVAILABLE, f"the image archive did not answer within {self.timeout:g} s to {what}"
            ) from None
        except requests.ConnectionError:
            raise TriageError(ErrorCode.PACS_UNAVAILABLE, f"the image archive could not be reached to {what}") from None
        except requests.RequestException as exc:
            raise TriageError(
                ErrorCode.PACS_UNAVAILABLE, f"the request to {what} failed ({type(exc).__name__})"
            ) from None
        except InvalidDicomError:
            # The archive sent an object pydicom cannot read as Part 10 (no preamble, no "DICM", no file meta):
            # asking again gives the same bytes, so the study is "not analysed", not "try later".
            raise TriageError(
                ErrorCode.UNREADABLE_IMAGE, f"the image archive's answer to {what} is not a readable DICOM file"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            # The client raises these for answers it cannot parse: bad JSON, a multipart body that is not DICOM.
            detail = f"the image archive's answer to {what} could not be read ({type(exc).__name__})"
            raise TriageError(ErrorCode.PACS_UNAVAILABLE, detail) from None


class CircuitBreaker:
    """Closed → (``threshold`` failures in a row) → open for ``cooldown`` s → half-open: one trial request; its
    success closes the breaker, its failure opens it again. Thread-safe: workers share one source."""

    def __init__(self, threshold: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1 or cooldown <= 0:
            raise ValueError("the breaker needs threshold >= 1 and a positive cooldown")
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0
        self._open_until = 0.0
        self._trial_running = False

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self.failures >= self.threshold and self._clock() < self._open_until

    def refusal(self) -> float | None:
        """None when a request may go out now; else the seconds until the archive is tried again."""
        with self._lock:
            if self.failures < self.threshold:
                return None
            left = self._open_until - self._clock()
            if left > 0:
                return left
            if self._trial_running:  # half-open: one request tests the archive, the others wait for its answer
                return self.cooldown
            self._trial_running = True
            return None

    def succeeded(self) -> None:
        with self._lock:
            self.failures = 0
            self._trial_running = False

    def failed(self) -> None:
        with self._lock:
            self.failures += 1
            self._trial_running = False
            if self.failures >= self.threshold:
                self._open_until = self._clock() + self.cooldown


def _datasets_from_json(results: object, what: str) -> list[Dataset]:
    """QIDO-RS results (PS3.18 F.2 DICOM JSON) as datasets; an answer of another shape is the archive's fault."""
    try:
        if not isinstance(results, list):
            raise TypeError("expected a JSON array")
        return [Dataset.from_json(result) for result in results]
    except Exception as exc:
        detail = f"the image archive's answer to {what} is not DICOM JSON ({type(exc).__name__})"
        raise TriageError(ErrorCode.PACS_UNAVAILABLE, detail) from None


def _require_valid_uids(*uids: str) -> None:
    """An order with a malformed UID names a study no archive can have (PS3.5 9.1); the client would refuse it."""
    # The core's rule, not pydicom's UID class: that would log the offending value, and a UID is not for the logs.
    if not all(is_dicom_uid(uid) for uid in uids):
        raise TriageError(ErrorCode.STUDY_NOT_FOUND, "the study or instance UID is not a valid DICOM UID")


def _error_for_status(status: int, what: str) -> TriageError:
    if status == 404:
        return TriageError(ErrorCode.STUDY_NOT_FOUND, f"the image archive answered 404 Not Found to {what}")
    if status in (401, 403):
        return TriageError(
            ErrorCode.PACS_UNAVAILABLE,
            f"the image archive refused the configured credentials (HTTP {status}) to {what}; "
            "check the DICOMweb username and password",
        )
    return TriageError(ErrorCode.PACS_UNAVAILABLE, f"the image archive answered HTTP {status} to {what}")
