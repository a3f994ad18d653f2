"""Composition root: the only place that knows every adapter. Nothing is created at import time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Settings, load_settings
from .core.ports import ImageScorer, StudySource
from .core.service import SystemClock, TriageService
from .jobs import InlineJobQueue
from .retry import RetryPlanner, RetryPolicy, RetryScheduler
from .storage import SqlOrderStore, create_database_engine, migrate

if TYPE_CHECKING:
    from flask import Blueprint, Flask
    from sqlalchemy import Engine

    from ..compliance.audit_store import AuditLog
    from ..compliance.auth import AccessControl
    from ..compliance.monitoring_access import MonitoringAccess
    from ..dicom_results.outbox import DicomResultsSender
    from ..monitoring.site_gate import SiteGate
    from ..monitoring.wiring import Monitoring
    from .celery_queue import CeleryJobQueue

log = logging.getLogger(__name__)


@dataclass
class Components:
    settings: Settings
    engine: Engine
    store: SqlOrderStore
    #: The in-process queue (embedded default), or the Celery publisher (queue = "celery").
    queue: InlineJobQueue | CeleryJobQueue
    service: TriageService
    audit: AuditLog
    access: AccessControl | None = None
    #: Draft reports, final-report intake, live metrics and drift (set by `install_monitoring`).
    monitoring: Monitoring | None = None
    #: Automatic retries of retryable failures (radtriage.app.retry); runs where the workers run.
    retries: RetryScheduler | None = None
    #: Shadow mode: whether the model's priorities are acted on (issue 10; `radtriage.monitoring.site_gate`).
    gate: SiteGate | None = None
    #: Results into the PACS as DICOM SR + Secondary Capture by STOW-RS (setting `dicom_results`; issue 13).
    dicom_results: DicomResultsSender | None = None

    def start(self) -> None:
        """Start the workers and re-queue what a previous process left unfinished."""
        from ..compliance.audit import APPLICATION_START, AuditRecord

        self.audit.record(AuditRecord(APPLICATION_START))
        self.queue.start()
        if not isinstance(self.queue, InlineJobQueue):
            # With a broker this process only takes orders (radtriage api / mllp): no model, and the worker
            # processes recover unfinished jobs (sweeper, by lease) and run the automatic retries.
            return
        self._warn_findings_not_assessed()
        self._announce_shadow_mode()
        resumed = self.service.resume_unfinished()
        if resumed:
            log.info("re-queued %d unfinished job(s)", resumed)
        if self.retries is not None:
            self.retries.start()
        if self.dicom_results is not None:
            self.dicom_results.start()

    def _warn_findings_not_assessed(self) -> None:
        """Say loudly, in the log and the audit trail, when the policy has a rule the model can never fire.

        This process runs workers, so it loads the model now rather than at its first study."""
        from ..compliance.audit import FINDINGS_NOT_ASSESSED, AuditRecord

        try:
            scorer = self.service.scorer
            missing = self.service.not_assessed(scorer)
        except Exception:  # the jobs will fail with MODEL_UNAVAILABLE and say so; start-up goes on
            log.warning("the model could not be loaded at start-up, so its findings could not be checked")
            return
        if not missing:
            return
        log.warning(
            "THE TRIAGE POLICY HAS RULES FOR FINDINGS THE MODEL CANNOT ASSESS: %s. Model %s %s has no output for "
            "them; every result reports them as 'not assessed' and these rules can never raise a priority.",
            ", ".join(missing),
            scorer.identity.name,
            scorer.identity.version,
        )
        self.audit.record(
            AuditRecord(
                FINDINGS_NOT_ASSESSED,
                details={
                    "not-assessed": ", ".join(missing),
                    "model": f"{scorer.identity.name} {scorer.identity.version}",
                    "model-sha256": scorer.identity.sha256,
                },
            )
        )

    def _announce_shadow_mode(self) -> None:
        """Say at start-up whether the model's priorities are acted on; an explicit setting is audited."""
        from ..monitoring.site_gate import audit_setting_override

        audit_setting_override(self.settings.shadow_mode, self.audit)
        if self.gate is None:
            return
        try:
            model = self.service.scorer.identity
        except Exception:  # reported by _warn_findings_not_assessed already
            return
        reason = self.gate(model)
        if reason is not None:
            log.warning("SHADOW MODE (%s): results are recorded and shown; no priority is raised or sent", reason)
        else:
            log.info("shadow mode off: the model's priorities are acted on")

    def close(self) -> None:
        from ..compliance.audit import APPLICATION_STOP, AuditRecord

        if self.retries is not None:
            self.retries.stop()
        if self.dicom_results is not None:
            self.dicom_results.stop()
        self.queue.stop()
        self.audit.flush()
        self.audit.record(AuditRecord(APPLICATION_STOP))
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
            breaker_failures=settings.dicomweb_breaker_failures,
            breaker_cooldown=settings.dicomweb_breaker_cooldown,
        )
    if settings.study_source == "folder":
        from ..imaging.folder_source import FolderStudySource

        folder = Path(settings.study_folder or Path(settings.home) / "studies")
        folder.mkdir(parents=True, exist_ok=True)
        return FolderStudySource(folder)
    raise ValueError(f"unknown study_source {settings.study_source!r} (folder or dicomweb)")


def resolve_model_path(settings: Settings) -> Path:
    """The configured model, else the one activated in the registry, else the shipped default, else the untrained
    placeholder (created on first use, and labelled as such in every output)."""
    from ..model.registry import SHIPPED_DEFAULT, active_path

    if settings.model:
        return Path(settings.model)
    active = active_path(settings.home)
    if active is not None:
        return active
    if (SHIPPED_DEFAULT / "manifest.json").exists():
        return SHIPPED_DEFAULT
    from ..model.placeholder import ensure_placeholder

    return ensure_placeholder(Path(settings.home) / "models")


def model_scorer_factory(settings: Settings) -> Callable[[], ImageScorer]:
    def load() -> ImageScorer:
        from ..model.quality import QualityGates
        from ..model.scorer import XrvScorer  # torch is imported only by processes that score

        gates = QualityGates(
            min_patient_age_years=settings.min_patient_age_years, min_side_px=settings.min_image_side_px
        )
        return XrvScorer.from_artefact(resolve_model_path(settings), gates=gates)

    return load


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        base_delay=settings.retry_base_delay,
        max_delay=settings.retry_max_delay,
        retry_for=settings.retry_for_hours * 3600.0,
    )


def build_access_control(settings: Settings, engine: Engine, audit: AuditLog) -> AccessControl | None:
    """OAuth 2 (SMART Backend Services) for the FHIR API, or None when access control is off (development)."""
    if not settings.auth_required:
        return None
    from ..compliance.auth import (
        AccessControl,
        ClientRegistry,
        SqlJtiCache,
        generate_signing_key,
        load_signing_key,
    )

    base = settings.base_url.rstrip("/") or f"http://{settings.host}:{settings.port}"
    # Development without a configured key: a fresh key per process (tokens do not survive a restart).
    key = load_signing_key(settings.auth_signing_key) if settings.auth_signing_key else generate_signing_key()
    return AccessControl(
        issuer=settings.auth_issuer or f"{base}/auth",
        token_url=f"{base}/auth/token",
        audience=f"{base}/fhir",
        signing_key=key,
        registry=ClientRegistry.from_file(settings.auth_clients) if settings.auth_clients else ClientRegistry(),
        jti_cache=SqlJtiCache(engine),
        audit=audit.record,
        token_lifetime_s=settings.auth_token_lifetime,
    )


def build_job_queue(settings: Settings, store: SqlOrderStore) -> InlineJobQueue | CeleryJobQueue:
    if settings.queue == "inline":
        return InlineJobQueue(settings.workers, max_wait_s=settings.queue_max_wait)
    if settings.queue == "celery":
        from .celery_queue import CeleryJobQueue, celery_app, unqueued_marker

        if not settings.broker_url:
            raise ValueError("queue is celery but broker_url is not set (e.g. redis://127.0.0.1:6379/0)")
        return CeleryJobQueue(celery_app(settings), on_unqueued=unqueued_marker(store))
    raise ValueError(f"unknown queue {settings.queue!r} (inline or celery)")


def build_site_gate(settings: Settings, engine: Engine, audit: AuditLog) -> SiteGate:
    """Shadow mode as the settings say (`radtriage.monitoring.site_gate`)."""
    from ..monitoring.drift import AlertSink
    from ..monitoring.site_drift import SiteDrift
    from ..monitoring.site_gate import SiteAcceptance, SiteGate

    acceptance = SiteAcceptance(engine, audit)
    drift = SiteDrift(
        engine,
        acceptance,
        psi_limit=settings.drift_psi_alert,
        min_cases=settings.drift_min_cases,
        alerts=AlertSink(engine, settings.alert_webhook),
    )
    return SiteGate(acceptance, settings.shadow_mode, drift_action=settings.site_drift_action, drift=drift)


def build_components(
    settings: Settings | None = None,
    *,
    scorer_factory: Callable[[], ImageScorer] | None = None,
    study_source: StudySource | None = None,
) -> Components:
    from ..compliance.audit_store import AuditLog
    from ..compliance.auth import check_production_secrets
    from ..imaging.selection import select_instance
    from ..model.policy import load_policy
    from ..monitoring.annotations import monitored_scorer_factory
    from ..monitoring.wiring import install_monitoring

    settings = settings or load_settings()
    check_production_secrets(settings)
    engine = create_database_engine(settings.resolved_database_url())
    migrate(engine)
    audit = AuditLog(engine)
    clock = SystemClock()
    retry_planner = RetryPlanner(engine, retry_policy(settings), clock, audit)
    store = SqlOrderStore(engine, audit=audit, hooks=[retry_planner])
    queue = build_job_queue(settings, store)
    gate = build_site_gate(settings, engine, audit)
    service = TriageService(
        store=store,
        queue=queue,
        source=study_source or build_study_source(settings),
        selector=select_instance,
        policy=load_policy(settings.policy or None),
        # Records what the model sees (input drift) and applies locally recalibrated thresholds.
        scorer=monitored_scorer_factory(scorer_factory or model_scorer_factory(settings), engine),
        clock=clock,
        shadow=gate,
        lease_s=settings.job_lease,
    )
    queue.bind(service.run_job, service.explain_job)
    components = Components(
        settings,
        engine,
        store,
        queue,
        service,
        audit,
        build_access_control(settings, engine, audit),
        retries=RetryScheduler(retry_planner, service, interval=settings.retry_poll_interval),
        gate=gate,
        dicom_results=build_dicom_results(settings, engine, service, audit),
    )
    install_monitoring(components)  # drafts and annotations on each scored result; sets components.monitoring
    return components


def build_dicom_results(
    settings: Settings, engine: Engine, service: TriageService, audit: AuditLog
) -> DicomResultsSender | None:
    """With `dicom_results` on: the outbox (fed by completed jobs' events) and its STOW-RS sender."""
    if not settings.dicom_results:
        return None
    from ..dicom_results.outbox import DicomResultsOutbox, DicomResultsSender, StowClient

    url = settings.dicom_results_url or settings.dicomweb_url
    if not url:
        raise ValueError("dicom_results is on but neither dicom_results_url nor dicomweb_url is set")
    credentials = (settings.dicomweb_username, settings.dicomweb_password) if settings.dicomweb_username else None
    outbox = DicomResultsOutbox(engine)
    sender = DicomResultsSender(
        outbox,
        service,
        StowClient(url, auth=credentials, timeout=settings.dicomweb_timeout),
        record_audit=audit.record,
        retry_base=settings.dicom_results_retry_base,
        retry_max=settings.dicom_results_retry_max,
    )
    outbox.on_added = sender.wake
    service.listeners.append(outbox.on_event)  # one row per completed job; sending happens on the sender's thread
    return sender


def related_interfaces(settings: Settings) -> list[str]:
    """What the FHIR CapabilityStatement says about the service's other standard interfaces."""
    base = settings.base_url.rstrip("/")
    return [
        f"CDS Hooks 2.0 services (patient-view, order-sign) are discovered at {base}/cds-services; calls carry "
        "the EHR's signed JWT (docs/cds-hooks.md)."
    ] + (
        [
            "Each result is also stored in the PACS as a DICOM SR (TID 1500) with its heatmaps as Secondary "
            "Captures, by STOW-RS (docs/dicom-results.md)."
        ]
        if settings.dicom_results
        else []
    )


def build_cds_door(components: Components) -> Blueprint:
    """The CDS Hooks door; JWTs of registered EHRs are required whenever the FHIR API requires tokens."""
    from ..cds.api import cds_blueprint
    from ..cds.auth import CdsClientAuth, CdsClientRegistry
    from ..cds.ehr_fhir import fetch_patient
    from ..compliance.auth import SqlJtiCache
    from .storage.cds_store import SqlCdsRecords

    settings = components.settings
    auth = None
    if settings.auth_required:
        registry = CdsClientRegistry.from_file(settings.cds_clients) if settings.cds_clients else CdsClientRegistry([])
        auth = CdsClientAuth(registry, SqlJtiCache(components.engine))
    else:
        log.warning("CDS Hooks: no JWT is checked (auth_required is off; development mode)")
    return cds_blueprint(
        components.service,
        audit=components.audit,
        records=SqlCdsRecords(components.engine),
        auth=auth,
        lookback_days=settings.cds_lookback_days,
        base_url=settings.base_url.rstrip("/") or None,
        fetch_patient=fetch_patient,
    )


def monitoring_access(components: Components) -> MonitoringAccess:
    """Tokens for /metrics and /monitoring/metrics.json: required in production and whenever the API needs them."""
    from ..compliance.monitoring_access import MonitoringAccess

    settings = components.settings
    return MonitoringAccess.from_token_file(
        settings.monitoring_token_file,
        required=settings.mode == "production" or settings.auth_required,
        access=components.access,
        audit=components.audit.record,
    )


def create_app(settings: Settings | None = None, components: Components | None = None) -> Flask:
    """The WSGI application: the FHIR door, the monitoring endpoints and the web pages on one set of components."""
    from flask import Flask

    from ..compliance.flask_auth import auth_blueprint, install_access_control
    from ..fhir.api import fhir_blueprint
    from ..fhir.devices import models_from_results
    from ..monitoring.api import monitoring_blueprint
    from ..monitoring.wiring import install_monitoring
    from ..web import web_blueprint  # the pages for people (sign-in, worklist, study, audit, model)
    from .storage.fhir_resource_store import SqlFhirResourceStore

    components = components or build_components(settings)
    monitoring = install_monitoring(components)  # idempotent
    app = Flask("radtriage")
    app.extensions["radtriage"] = components
    install_access_control(app, components.access)
    app.register_blueprint(auth_blueprint(), url_prefix="/auth")
    base_url = f"{components.settings.base_url.rstrip('/')}/fhir" if components.settings.base_url else None
    fhir = fhir_blueprint(
        components.service,
        audit=components.audit,
        find_model=models_from_results(components.store),
        base_url=base_url,
        find_draft=monitoring.drafts,
        receive_final_report=monitoring.fhir_report_receiver(),
        resources=SqlFhirResourceStore(components.engine),
        related=related_interfaces(components.settings),
    )
    app.register_blueprint(fhir, url_prefix="/fhir")
    app.register_blueprint(build_cds_door(components), url_prefix="/cds-services")
    app.register_blueprint(monitoring_blueprint(monitoring, monitoring_access(components)))
    app.register_blueprint(web_blueprint(components, draft_report=monitoring.drafts))
    return app
