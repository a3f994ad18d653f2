"""Settings: defaults, then a TOML file, then environment variables (which win), then the command line.

Environment variables are named ``RADTRIAGE_<FIELD>`` in upper case, e.g. ``RADTRIAGE_DATABASE_URL``.
Nothing is read at import time; `load_settings()` is called by the composition root. Every value is checked
when the settings are loaded (its type, and the ranges in `RULES`): a bad one stops the start with a
`SettingsError` whose one-line message names the setting, where the value came from and what is allowed.
``radtriage config show`` prints the effective settings and the source of each.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
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
    #: Automatic retries of jobs that failed for a reason that may go away (PACS down; radtriage.app.retry):
    #: first delay and longest delay in seconds, and for how many hours after the first failure (0: off).
    retry_base_delay: float = 30.0
    retry_max_delay: float = 900.0
    retry_for_hours: float = 24.0
    retry_poll_interval: float = 5.0
    #: Circuit breaker of the DICOMweb source: after this many failed requests in a row the PACS is not asked for
    #: `dicomweb_breaker_cooldown` seconds (jobs fail fast as pacs-unavailable and are retried later).
    dicomweb_breaker_failures: int = 5
    dicomweb_breaker_cooldown: float = 30.0
    #: Path to a model artefact folder (weights + manifest.json); empty means the shipped default.
    model: str = ""
    #: Path to a triage policy TOML file; empty means the built-in default policy.
    policy: str = ""
    #: Quality gates before scoring (radtriage/model/quality.py): a study that fails one is "not analysed".
    min_patient_age_years: float = 18.0
    min_image_side_px: int = 256
    #: Shadow mode (issue 10): "on" scores, stores and shows results but never raises a priority or sends a
    #: priority update; "off" acts on the model; "auto" is shadow until a site validation is recorded for the
    #: active model (`radtriage model validate-site`). Tests that assert a raised priority set "off" explicitly.
    shadow_mode: str = "auto"
    #: When the site's recent scores drift from its validation: "alert" only, or "shadow" (fall back to shadow
    #: mode automatically, audited) as well. The fallback applies to shadow_mode "auto"; "off" still alerts.
    site_drift_action: str = "alert"
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
    #: HTTP server limits (radtriage.app.http_server; docs/operations.md): worker threads, open connections in
    #: all and per client address (0: no per-address limit, e.g. behind a reverse proxy), seconds to receive the
    #: request headers and the whole request from its first byte, seconds a kept-alive connection may stay idle,
    #: and the largest request header block in bytes.
    http_threads: int = 8
    http_connection_limit: int = 256
    http_connections_per_address: int = 32
    http_header_timeout: float = 10.0
    http_request_timeout: float = 60.0
    http_channel_timeout: int = 60
    http_max_header_bytes: int = 65536
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
    #: File holding the bearer token (>= 32 characters) that metrics scrapers send to /metrics and
    #: /monitoring/metrics.json; required there in production (radtriage.compliance.monitoring_access).
    monitoring_token_file: str = ""
    #: URL that receives alerts as JSON (optional).
    alert_webhook: str = ""
    recalibration_target_sensitivity: float = 0.9
    # --- Web pages (radtriage.web; docs/web.md) ---
    #: Users file (JSON; scrypt hashes; `radtriage users add`) and the session signing secret.
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
    #: Seconds a new MLLP connection may take to send its first byte; connections one peer address may hold; peer
    #: addresses or networks (e.g. the RIS) for which `mllp_reserved_connections` slots are kept free of others.
    mllp_first_byte_timeout: float = 10.0
    mllp_max_connections_per_peer: int = 8
    mllp_reserved_peers: str = ""
    mllp_reserved_connections: int = 8
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
    # --- CDS Hooks (radtriage.cds; docs/cds-hooks.md) ---
    #: JSON registry of the EHRs allowed to call the CDS services (iss, public keys, jku, fhir_servers). With
    #: auth_required, a call without a JWT from one of them is refused; without auth_required nothing is checked.
    cds_clients: str = ""
    #: Days within which a patient's triage results count as recent (patient-view cards, order-sign suggestion).
    cds_lookback_days: int = 30
    # --- Results into the PACS (radtriage.dicom_results; docs/dicom-results.md) ---
    #: Store each result as a DICOM SR (TID 1500) and its heatmaps as Secondary Captures by STOW-RS.
    dicom_results: bool = False
    #: The DICOMweb base URL for STOW-RS; empty: dicomweb_url (with dicomweb_username/password).
    dicom_results_url: str = ""
    #: Seconds before a failed STOW-RS is tried again, doubling up to the maximum.
    dicom_results_retry_base: float = 10.0
    dicom_results_retry_max: float = 600.0

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        Path(self.home).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{Path(self.home) / 'radtriage.sqlite3'}"


class SettingsError(ValueError):
    """A setting that cannot be used. Its message is one line: the setting, where it came from, what is allowed."""

    def __init__(self, name: str, source: str, problem: str) -> None:
        super().__init__(f"setting {name} ({source}): {problem}")
        self.name = name
        self.source = source


_PORT = "a port number from 1 to 65535"
_PORT_OR_OFF = "a port number from 1 to 65535, or 0 for off"
_POSITIVE = "a number greater than 0"

#: Settings with a narrower range than their type: the check, and the words that say what is allowed.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "port": (lambda v: 1 <= v <= 65535, _PORT),
    "mllp_port": (lambda v: 0 <= v <= 65535, _PORT_OR_OFF),
    "ris_port": (lambda v: 0 <= v <= 65535, _PORT_OR_OFF),
    "workers": (lambda v: v >= 1, "a whole number of at least 1"),
    "dicomweb_attempts": (lambda v: v >= 1, "a whole number of at least 1"),
    "dicomweb_timeout": (lambda v: v > 0, _POSITIVE),
    "mllp_idle_timeout": (lambda v: v > 0, _POSITIVE),
    "mllp_read_timeout": (lambda v: v > 0, _POSITIVE),
    "ris_timeout": (lambda v: v > 0, _POSITIVE),
    "mllp_max_connections": (lambda v: v >= 1, "a whole number of at least 1"),
    "mllp_max_message_bytes": (lambda v: v >= 1, "a whole number of at least 1"),
    "auth_token_lifetime": (lambda v: 1 <= v <= 86400, "seconds, from 1 to 86400"),
    "cds_lookback_days": (lambda v: 1 <= v <= 3650, "days, from 1 to 3650"),
    "dicom_results_retry_base": (lambda v: 0.01 <= v <= 3600, "seconds, from 0.01 to 3600"),
    "dicom_results_retry_max": (lambda v: 0.01 <= v <= 86400, "seconds, from 0.01 to 86400"),
    "retention_days": (lambda v: v >= 0, "a whole number of days, 0 for keep forever"),
    "web_session_idle_minutes": (lambda v: v >= 1, "a whole number of at least 1"),
    "web_session_max_hours": (lambda v: v >= 1, "a whole number of at least 1"),
    "min_image_side_px": (lambda v: v >= 1, "a whole number of at least 1"),
    "drift_min_cases": (lambda v: v >= 1, "a whole number of at least 1"),
    "mllp_first_byte_timeout": (lambda v: v > 0, _POSITIVE),
    "mllp_max_connections_per_peer": (lambda v: v >= 0, "a whole number, 0 for no per-peer limit"),
    "mllp_reserved_connections": (lambda v: v >= 0, "a whole number, at least 0"),
    # HTTP server limits (issue 15; radtriage.app.http_server)
    "http_threads": (lambda v: v >= 1, "a whole number of at least 1"),
    "http_connection_limit": (lambda v: v >= 1, "a whole number of at least 1"),
    "http_connections_per_address": (lambda v: v >= 0, "a whole number, 0 for no per-address limit"),
    "http_header_timeout": (lambda v: v > 0, _POSITIVE),
    "http_request_timeout": (lambda v: v > 0, _POSITIVE),
    "http_channel_timeout": (lambda v: v >= 1, "a whole number of seconds, at least 1"),
    "http_max_header_bytes": (lambda v: v >= 1024, "a whole number of bytes, at least 1024"),
    # Automatic retries and the PACS circuit breaker (issue 15; radtriage.app.retry, imaging.dicomweb_source)
    "retry_base_delay": (lambda v: v > 0, _POSITIVE),
    "retry_max_delay": (lambda v: v > 0, _POSITIVE),
    "retry_for_hours": (lambda v: v >= 0, "hours, 0 turns automatic retries off"),
    "retry_poll_interval": (lambda v: v > 0, _POSITIVE),
    "dicomweb_breaker_failures": (lambda v: v >= 1, "a whole number of at least 1"),
    "dicomweb_breaker_cooldown": (lambda v: v > 0, _POSITIVE),
    "study_source": (lambda v: v in ("folder", "dicomweb"), '"folder" or "dicomweb"'),
    "mode": (lambda v: v in ("development", "production"), '"development" or "production"'),
    "shadow_mode": (lambda v: v in ("off", "on", "auto"), '"off", "on" or "auto"'),
    "drafting_mode": (lambda v: v in ("off", "shadow", "on"), '"off", "shadow" or "on"'),
    "hl7_outbound_style": (lambda v: v in ("orm", "omi"), '"orm" or "omi"'),
    "database_url": (
        lambda v: v == "" or v.startswith(("sqlite:", "postgresql:", "postgresql+")),
        'empty (SQLite under home), "sqlite:///PATH" or "postgresql+psycopg://..." (other databases are not '
        "supported)",
    ),
}

_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
#: Settings whose values are never shown (`radtriage config show` masks them).
SECRET_SETTINGS = frozenset({"dicomweb_password", "web_secret_key"})


def _kind(name: str) -> type:
    spec = Settings.__dataclass_fields__[name]
    factory: Any = spec.default_factory
    return type(spec.default if spec.default is not MISSING else factory())


def _allowed(name: str) -> str:
    rule = RULES.get(name)
    return rule[1] if rule else _TYPE_WORDS.get(_kind(name), "text")


def _typed(name: str, value: Any, source: str, *, text: bool) -> Any:
    """`value` as the setting's type, or a `SettingsError`. Text (the environment) is converted; values from a
    TOML file must already have the right type (``port = "8080"`` is refused, not guessed)."""
    kind = _kind(name)
    refused = SettingsError(name, source, f"{_shown(name, value)} is not allowed; use {_allowed(name)}")
    if text and isinstance(value, str) and kind is not str:
        word = value.strip().lower()
        if kind is bool:
            if word in {"1", "true", "yes", "on"}:
                return True
            if word in {"0", "false", "no", "off", ""}:
                return False
            raise refused
        try:
            return kind(word)
        except ValueError:
            raise refused from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise refused
    return value


def _shown(name: str, value: Any) -> str:
    """A refused value as an error message may show it: secrets never, passwords in URLs masked."""
    if name in SECRET_SETTINGS:
        return "the value given"
    return repr(masked(name, value)) if isinstance(value, str) else repr(value)


def _checked(name: str, value: Any, source: str, *, text: bool = False) -> Any:
    value = _typed(name, value, source, text=text)
    rule = RULES.get(name)
    if rule is not None and not rule[0](value):
        raise SettingsError(name, source, f"{_shown(name, value)} is not allowed; use {rule[1]}")
    return value


def _read_toml(path: str, origin: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError("config", origin, f"the file {path} does not exist") from None
    except IsADirectoryError:
        raise SettingsError("config", origin, f"{path} is a folder, not a TOML file") from None
    except OSError as error:
        raise SettingsError("config", origin, f"{path} cannot be read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError("config", origin, f"{path} is not valid TOML: {error}") from None
    section = data.get("radtriage", data)
    if not isinstance(section, dict):
        raise SettingsError("config", origin, f"{path}: [radtriage] must be a table of settings")
    return section


def load_settings_with_sources(
    path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None, **overrides: Any
) -> tuple[Settings, dict[str, str]]:
    """The settings and, for each one, where its value came from ("default", the file, the variable, ...).
    Every value is checked (type and range) before anything uses it: a bad one is a `SettingsError`."""
    env = dict(os.environ if env is None else env)
    known = [f.name for f in fields(Settings)]
    sources = dict.fromkeys(known, "default")
    values: dict[str, Any] = {}
    config_path = str(path) if path else env.get("RADTRIAGE_CONFIG")
    if config_path:
        origin = "--config" if path else "environment RADTRIAGE_CONFIG"
        for name, value in _read_toml(config_path, origin).items():
            where = f"in {config_path}"
            if name not in sources:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f'; did you mean "{close[0]}"?' if close else "; `radtriage config show` lists them"
                raise SettingsError(name, where, f"unknown setting{hint}")
            values[name], sources[name] = _checked(name, value, where), where
    for name in known:
        variable = f"RADTRIAGE_{name.upper()}"
        if variable in env:
            where = f"environment {variable}"
            values[name], sources[name] = _checked(name, env[variable], where, text=True), where
    for name, value in overrides.items():
        if value is not None:
            where = f"command line --{name.replace('_', '-')}"
            values[name], sources[name] = _checked(name, value, where), where
    return replace(Settings(), **values), sources


def load_settings(
    path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None, **overrides: Any
) -> Settings:
    """Defaults < TOML file (``RADTRIAGE_CONFIG`` or `path`) < environment < explicit overrides, all checked."""
    return load_settings_with_sources(path, env, **overrides)[0]


def masked(name: str, value: Any) -> str:
    """A setting's value as `radtriage config show` prints it: secrets and passwords in URLs hidden."""
    if name in SECRET_SETTINGS or (name == "auth_signing_key" and "-----BEGIN" in str(value)):
        return "(set, hidden)" if value else "(not set)"
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"(://[^/:@]+:)[^@/]+@", r"\1***@", text)
