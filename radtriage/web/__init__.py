"""Web pages for people: a worklist for radiologists, a study viewer, the audit trail for compliance officers,
and the model and operations page. Mount with ``app.register_blueprint(web_blueprint(components))``."""

from __future__ import annotations

from typing import Any

__all__ = ["web_blueprint"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `radtriage users ...` does not load Flask and the image stack.
    if name == "web_blueprint":
        from .views import web_blueprint

        return web_blueprint
    raise AttributeError(name)
