"""``fabguard serve``: the line-side HTTP inspection service (FastAPI + uvicorn, SQLAlchemy Core, Alembic).

Layout as FastAPI's "bigger applications": :mod:`.app` builds the app and its lifespan, :mod:`.config` holds
the settings, :mod:`.dependencies` the shared dependencies, ``routers/`` one ``APIRouter`` per area,
``migrations/`` the Alembic scripts of the log and registry tables (:mod:`.db`). See ``docs/serve.md``.
"""
