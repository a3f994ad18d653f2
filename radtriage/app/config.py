"""Settings: defaults, then a TOML file, then environment variables (which win).

Environment variables are named ``RADTRIAGE_<FIELD>`` in upper case, e.g. ``RADTRIAGE_DATABASE_URL``.
Nothing is read at import time; `load_settings()` is called by the composition root.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


def default_home() -> Path:
    return Path(os.environ.get("RADTRIAGE_HOME", Path.cwd() / "var"))


@dataclass(frozen=True)
class Settings:
    #: SQLAlchemy URL. SQLite (the embedded default) or postgresql+psycopg://...
    database_url: str = ""
    #: "folder" (study_folder holds DICOM files) or "dicomweb" (dicomweb_url).
    study_source: str = "folder"
    study_folder: str = ""
    dicomweb_url: str = ""
    dicomweb_username: str = ""
    dicomweb_password: str = ""
    #: Seconds for one DICOMweb request, and how many times a failed request is tried in all.
    dicomweb_timeout: float = 10.0
    dicomweb_attempts: int = 2
    #: Path to a model artefact folder (weights + manifest.json); empty means the shipped default.
    model: str = ""
    #: Path to a triage policy TOML file; empty means the built-in default policy.
    policy: str = ""
    #: Quality gates before scoring (radtriage/model/quality.py): a study that fails one is "not analysed".
    min_patient_age_years: float = 18.0
    min_image_side_px: int = 256
    #: Shadow mode (issue 10): "on" scores, stores and shows results but never raises a priority or sends a
    #: priority update; "off" acts on the model; "auto" is shadow until a site validation is recorded for the
    #: active model. Tests that assert a raised priority set "off" explicitly.
    shadow_mode: str = "off"
    #: "inline" (in-process worker threads) is the embedded default; "celery" publishes job ids to a broker
    #: (broker_url) for `radtriage worker` processes.
    queue: str = "inline"
    #: Celery broker, e.g. redis://127.0.0.1:6379/0 (queue = "celery").
    broker_url: str = ""
    #: Seconds after which Redis gives an unacknowledged message (its worker vanished) to another worker.
    broker_visibility_timeout: float = 3600.0
    #: Seconds between two rounds of the broker sweeper (radtriage.app.sweeper) in each worker process.
    sweep_interval: float = 5.0
    workers: int = 1
    #: Seconds a queued job waits before it is served one priority level up (ageing; 0 = never).
    queue_max_wait: float = 300.0
    #: Seconds after which a job left running by a worker that died may be taken over by another worker.
    job_lease: float = 300.0
    host: str = "127.0.0.1"
    port: int = 8080
    #: Public base URL used in FHIR Bundle links; derived from the request when empty.
    base_url: str = ""
    home: str = field(default_factory=lambda: str(default_home()))
    #: "production" refuses to start without access control and its secrets.
    mode: str = "development"
    #: Require OAuth 2 bearer tokens on the FHIR API (SMART Backend Services); production requires it.
    auth_required: bool = False
    auth_issuer: str = ""
    #: PEM file of the token signing key (EC P-384 or RSA 2048+); a fresh key per process when empty (development).
    auth_signing_key: str = ""
    #: JSON registry of clients (their JWKS, roles, scopes) and trusted external issuers.
    auth_clients: str = ""
    auth_token_lifetime: int = 300
    #: Days to keep studies' derived data and pixel caches; 0 keeps them. The audit trail is always kept.
    retention_days: int = 0

    # --- Draft reports and monitoring (radtriage.monitoring, radtriage.model.drafting) ---
    #: Draft preliminary reports for routine studies: off | shadow (recorded, not sent) | on.
    drafting_mode: str = "off"
    #: Margin below each threshold for a draft: "0.005", or per finding "Effusion=0.01,*=0.005".
    drafting_margin: str = "0.0"
    drafting_target_npv: float = 0.95
    metrics_window_days: int = 30
    #: Population stability index above which score drift raises an alert; cases needed before it is computed.
    drift_psi_alert: float = 0.25
    drift_min_cases: int = 30
    #: Sensitivity ("any abnormality") below which an alert is raised; 0 = no floor.
    performance_floor_sensitivity: float = 0.0
    #: URL that receives alerts as JSON (optional).
    alert_webhook: str = ""
    recalibration_target_sensitivity: float = 0.9
    # --- Web pages (radtriage.web; docs/web.md) ---
    #: Users file (JSON; scrypt hashes; `python -m radtriage.web.users add`) and the session signing secret.
    web_users: str = ""
    web_secret_key: str = ""
    web_session_idle_minutes: int = 30
    web_session_max_hours: int = 12
    #: Images with more pixels are shown downscaled even at "full resolution".
    web_image_max_pixels: int = 40_000_000
    # --- HL7 v2 door (radtriage.hl7; docs/hl7-conformance.md) ---
    #: MLLP listener for orders from the RIS; port 0 turns it off.
    mllp_host: str = "127.0.0.1"
    mllp_port: int = 0
    #: Largest message accepted (bytes); a larger one is answered AE.
    mllp_max_message_bytes: int = 1_048_576
    #: Seconds a connection may stay silent between messages, and may take to finish a message it started.
    mllp_idle_timeout: float = 300.0
    mllp_read_timeout: float = 30.0
    mllp_max_connections: int = 64
    #: Peer addresses or networks allowed to connect, comma-separated ("10.1.0.0/16,192.0.2.7"); empty: any.
    mllp_allowed_peers: str = ""
    #: TLS for the listener (PEM files); with a client CA, clients must present a certificate it signed.
    mllp_tls_cert: str = ""
    mllp_tls_key: str = ""
    mllp_tls_client_ca: str = ""
    #: Sending applications allowed, comma-separated, as MSH-3 or MSH-3^MSH-4 ("RIS,PACS^HOSP"); empty: any.
    hl7_allowed_senders: str = ""
    #: MSH-11 processing ids accepted, comma-separated (P production, T training, D debugging).
    hl7_processing_ids: str = "P"
    #: Where ORM messages carry the Study Instance UID (OMI always uses IPC-3), e.g. "ZDS-1" or "OBR-20".
    hl7_study_uid_field: str = "ZDS-1"
    #: This service's MSH-3 / MSH-4 in ACKs and messages to the RIS.
    hl7_application: str = "RADTRIAGE"
    hl7_facility: str = ""
    #: The RIS that receives priority updates over MLLP; port 0 sends none.
    ris_host: str = ""
    ris_port: int = 0
    ris_application: str = ""
    ris_facility: str = ""
    #: Seconds to wait for the RIS's ACK.
    ris_timeout: float = 30.0
    #: TLS to the RIS: the CA that signed its certificate, and this service's client certificate and key.
    ris_tls_ca: str = ""
    ris_tls_cert: str = ""
    ris_tls_key: str = ""
    #: "orm" (ORM^O01, ORC-1 = XO) or "omi" (OMI^O23) for priority updates.
    hl7_outbound_style: str = "orm"
    #: Also send an ORU^R01 with the findings.
    hl7_send_oru: bool = False
    #: Retry delays for the outbox when the RIS is down or answers AR: base, doubling, up to the maximum.
    hl7_retry_base: float = 5.0
    hl7_retry_max: float = 300.0
    #: Site overrides of the priority mapping table (TOML; see radtriage/hl7/priority_map.py); empty: default.
    priority_map: str = ""

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        Path(self.home).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{Path(self.home) / 'radtriage.sqlite3'}"


def _coerce(value: str, like: Any) -> Any:
    if isinstance(like, bool):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    return value


def load_settings(
    path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None, **overrides: Any
) -> Settings:
    """Defaults < TOML file (``RADTRIAGE_CONFIG`` or `path`) < environment < explicit overrides."""
    env = dict(os.environ if env is None else env)
    settings = Settings()
    known = {f.name for f in fields(Settings)}
    config_path = path or env.get("RADTRIAGE_CONFIG")
    if config_path:
        with open(config_path, "rb") as fh:
            data = tomllib.load(fh)
        section = data.get("radtriage", data)
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"unknown settings in {config_path}: {', '.join(sorted(unknown))}")
        settings = replace(settings, **section)
    from_env = {
        name: _coerce(env[f"RADTRIAGE_{name.upper()}"], getattr(settings, name))
        for name in known
        if f"RADTRIAGE_{name.upper()}" in env
    }
    settings = replace(settings, **from_env)
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
