"""The pages render in Firefox too (Debian's firefox-esr, headless), not only in Chromium.

Firefox has no driver here (geckodriver is not packaged), so this drives it the one way it offers without one:
its headless screenshot of a page served by the real service. It checks that the sign-in page loads with its
style sheet applied (the Sign in button's colour is on the picture) and that Firefox fetched the page's CSS and
script. The interactive flows are driven in Chromium (test_browser.py).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radtriage.app.factory import Components, create_app

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(FIREFOX is None, reason="Firefox is not installed (scripts/bootstrap.sh --dev installs it)"),
]
BUTTON_TEAL = np.array([94, 234, 212])  # --accent (#5eead4) in web.css: the Sign in button


def test_the_sign_in_page_renders_styled_in_firefox(components: Components, tmp_path: Path) -> None:
    from waitress.server import create_server

    requested: list[str] = []
    app = create_app(components=components)

    @app.before_request
    def remember() -> None:
        from flask import request

        requested.append(request.path)

    server = create_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    picture = tmp_path / "firefox-sign-in.png"
    profile = tmp_path / "profile"
    profile.mkdir()
    try:
        subprocess.run(
            [
                FIREFOX,
                "--headless",
                "--no-remote",
                "--profile",
                str(profile),
                "--window-size=1280,800",
                "--screenshot",
                str(picture),
                f"http://127.0.0.1:{server.effective_port}/login",
            ],
            env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "MOZ_HEADLESS": "1"},
            capture_output=True,
            timeout=90,
            check=False,
        )
    finally:
        server.task_dispatcher.shutdown()
        server.close()
    assert picture.exists(), "Firefox wrote no screenshot"
    pixels = np.asarray(Image.open(picture).convert("RGB")).reshape(-1, 3).astype(int)
    teal = np.sum(np.abs(pixels - BUTTON_TEAL).sum(axis=1) < 40)
    assert teal > 2000, "the styled Sign in button is not on Firefox's picture"
    assert "/login" in requested
    assert any(path.endswith(".css") for path in requested) and any(path.endswith(".js") for path in requested)
