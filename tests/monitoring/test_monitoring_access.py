"""Monitoring endpoints need a token in production (issue 15 item 6): the scrape token from
`monitoring_token_file`, or a SMART token granting system/MeasureReport.r (the `monitoring` role). Before, anyone
who could reach the port read /metrics and /monitoring/metrics.json."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from radtriage.app.config import Settings
from radtriage.app.factory import build_components, create_app
from radtriage.compliance.audit_store import AuditLog
from radtriage.compliance.monitoring_access import MonitoringAccess
from tests.fhir.smart import SmartClient, access_settings, write_registry

ENDPOINTS = ("/metrics", "/monitoring/metrics.json")
SCRAPER = SmartClient("prometheus-1", "monitoring")
EHR = SmartClient("ehr-1", "ehr")


@pytest.fixture
def scrape_token(tmp_path: Path) -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def secured(tmp_path: Path, scrape_token: str) -> Iterator[tuple[FlaskClient, AuditLog]]:
    token_file = tmp_path / "metrics.token"
    token_file.write_text(scrape_token + "\n", encoding="utf-8")
    registry = write_registry(tmp_path / "clients.json", SCRAPER, EHR)
    settings = Settings(
        home=str(tmp_path),
        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        monitoring_token_file=str(token_file),
        **access_settings(registry),
    )
    components = build_components(settings)
    try:
        yield create_app(components=components).test_client(), components.audit
    finally:
        components.close()


@pytest.mark.parametrize("path", ENDPOINTS)
def test_without_a_token_the_monitoring_endpoints_refuse(secured: tuple[FlaskClient, AuditLog], path: str) -> None:
    http, audit = secured
    for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": "Basic eDp5"}):
        response = http.get(path, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="radtriage-monitoring"')
        assert "radtriage_" not in response.get_data(as_text=True)  # no figures leaked
    events, _ = audit.search(limit=50)
    assert sum(e.kind == "authentication-failed" for e in events) >= 3


@pytest.mark.parametrize("path", ENDPOINTS)
def test_the_scrape_token_opens_them(secured: tuple[FlaskClient, AuditLog], scrape_token: str, path: str) -> None:
    http, _ = secured
    response = http.get(path, headers={"Authorization": f"Bearer {scrape_token}"})
    assert response.status_code == 200


def test_a_smart_token_needs_the_monitoring_scope(secured: tuple[FlaskClient, AuditLog]) -> None:
    http, _ = secured
    scraper = SCRAPER.token(http, "system/MeasureReport.r")
    assert http.get("/metrics", headers={"Authorization": f"Bearer {scraper}"}).status_code == 200
    ehr = EHR.token(http, "system/Task.rs")
    refused = http.get("/metrics", headers={"Authorization": f"Bearer {ehr}"})
    assert refused.status_code == 403 and 'scope="system/MeasureReport.r"' in refused.headers["WWW-Authenticate"]


def test_in_development_without_access_control_they_stay_open(tmp_path: Path) -> None:
    components = build_components(Settings(home=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}"))
    try:
        http = create_app(components=components).test_client()
        assert [http.get(p).status_code for p in ENDPOINTS] == [200, 200]
    finally:
        components.close()


def test_a_short_scrape_token_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        MonitoringAccess(required=True, scrape_token="short")
