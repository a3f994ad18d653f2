"""The web pages' own settings: the users file, the session secret and how long a session lasts.

They are the service's `Settings` fields ``web_users``, ``web_secret_key``, ``web_session_idle_minutes``,
``web_session_max_hours`` and ``web_image_max_pixels`` (so ``RADTRIAGE_WEB_USERS`` etc. in the environment);
an object without them (a test's stand-in settings) falls back to the environment.

Production mode refuses to start without a users file and a session secret of at least 32 characters: a
secret generated at start-up would sign out everyone at each restart and differ between processes.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..compliance.auth import InsecureConfiguration

log = logging.getLogger(__name__)

MIN_SECRET_LENGTH = 32


@dataclass(frozen=True)
class WebSettings:
    users_file: str = ""
    secret_key: str = ""
    #: A session unused for this long is over (the person signs in again).
    session_idle_minutes: int = 30
    #: A session is over this long after sign-in, used or not.
    session_max_hours: int = 12
    #: Images with more pixels than this are shown downscaled even at "full resolution" (the browser's limit).
    image_max_pixels: int = 40_000_000
    production: bool = False

    @classmethod
    def from_settings(cls, settings: Any, env: Mapping[str, str] | None = None) -> WebSettings:
        env = os.environ if env is None else env

        def value(name: str, default: Any) -> Any:
            configured = getattr(settings, f"web_{name}", None)
            if configured not in (None, ""):
                return configured
            raw = env.get(f"RADTRIAGE_WEB_{name.upper()}")
            if raw is None or raw == "":
                return default
            return type(default)(raw)

        return cls(
            users_file=str(value("users", "")),
            secret_key=str(value("secret_key", "")),
            session_idle_minutes=int(value("session_idle_minutes", 30)),
            session_max_hours=int(value("session_max_hours", 12)),
            image_max_pixels=int(value("image_max_pixels", 40_000_000)),
            production=str(getattr(settings, "mode", "")).lower() == "production",
        )

    def checked_secret(self) -> str:
        """The session signing secret; in development without one, a random one for this process."""
        problems = []
        if self.production and len(self.secret_key) < MIN_SECRET_LENGTH:
            problems.append(f"web_secret_key must be set to at least {MIN_SECRET_LENGTH} random characters")
        if self.production and not self.users_file:
            problems.append("web_users (the users file) must be set")
        if problems:
            raise InsecureConfiguration("production mode refuses to start the web pages: " + "; ".join(problems))
        if self.secret_key:
            return self.secret_key
        log.warning("no web_secret_key: web sessions are signed with a random key and end when this process does")
        return secrets.token_urlsafe(48)
