"""Monitoring over HTTP: ``GET /metrics`` (Prometheus text format 0.0.4) and ``GET /monitoring/metrics.json``.

Both take ``days`` (the window, default the ``metrics_window_days`` setting) and serve aggregate figures only:
no patient data, no report text. Each request also runs the drift and performance-floor checks, so a Prometheus
scrape is enough to raise alerts (an alert is not repeated within a day). Mount with
``app.register_blueprint(monitoring_blueprint(monitoring, guard))`` (no prefix: the paths are the conventional
ones). In production both need a token (`radtriage.compliance.monitoring_access`): the `guard` checks it.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from flask import Blueprint, Response, request

from .live import prometheus_text, snapshot
from .wiring import Monitoring

if TYPE_CHECKING:
    from ..compliance.monitoring_access import MonitoringAccess

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def monitoring_blueprint(monitoring: Monitoring, guard: MonitoringAccess | None = None) -> Blueprint:
    blueprint = Blueprint("monitoring", __name__)

    if guard is not None:

        @blueprint.before_request
        def require_token() -> Response | None:
            refusal = guard.check(request.headers.get("Authorization", ""), request.remote_addr)
            if refusal is None:
                return None
            return Response(refusal.body, status=refusal.status, headers=refusal.headers,
                            content_type="application/json")

    def window_days() -> float | None:
        raw = request.args.get("days")
        if raw is None:
            return None
        try:
            days = float(raw)
        except ValueError:
            days = -1.0
        if not math.isfinite(days) or not 0 < days <= 3660:
            raise _BadWindow()
        return days

    @blueprint.get("/metrics")
    def prometheus() -> Response:
        # No bootstrap: Prometheus shows no intervals, and a scrape every few seconds must stay cheap.
        snap = snapshot(monitoring, days=window_days(), bootstrap=0)
        return Response(prometheus_text(snap), content_type=PROMETHEUS_TEXT)

    @blueprint.get("/monitoring/metrics.json")
    def metrics_json() -> Response:
        body = json.dumps(snapshot(monitoring, days=window_days()), allow_nan=False, default=str)
        return Response(body, content_type="application/json")

    @blueprint.errorhandler(_BadWindow)
    def bad_window(_: _BadWindow) -> Response:
        return Response(json.dumps({"error": "days must be a number of days in (0, 3660]"}), status=400,
                        content_type="application/json")

    return blueprint


class _BadWindow(Exception):
    pass
