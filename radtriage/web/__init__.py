"""Web pages for people: a worklist for radiologists, a study viewer, the audit trail for compliance officers,
and the model and operations page. Mount with ``app.register_blueprint(web_blueprint(components))``."""

from .views import web_blueprint

__all__ = ["web_blueprint"]
