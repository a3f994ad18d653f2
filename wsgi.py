"""WSGI entry point for a production server: `gunicorn wsgi:app` or `waitress-serve wsgi:app`.

Settings come from RADTRIAGE_CONFIG / RADTRIAGE_* environment variables. The worker threads start with the app.
"""

from radtriage.app.factory import build_components, create_app

components = build_components()
components.start()
app = create_app(components=components)
