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
    #: "inline" (in-process worker threads) is the embedded default.
    queue: str = "inline"
    workers: int = 1
    host: str = "127.0.0.1"
    port: int = 8080
    #: Public base URL used in FHIR Bundle links; derived from the request when empty.
    base_url: str = ""
    home: str = field(default_factory=lambda: str(default_home()))

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
