"""Shared dependencies: the service, its settings, the bearer token, an inspection's image body.

All are ``async``: FastAPI runs a plain ``def`` dependency on its thread pool, a thread hop per dependency
per request for work that never blocks."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fabguard.serve.app import Service
from fabguard.serve.config import Settings

IMAGE_TYPES = ("application/octet-stream", "image/png", "image/tiff")
bearer = HTTPBearer(auto_error=False, description="the service token (--token-file or FABGUARD_TOKEN)")


async def get_service(request: Request) -> Service:
    return request.app.state.service


async def get_settings(request: Request) -> Settings:
    return request.app.state.service.settings  # not through get_service: each dependency level costs time


def _check_token(credentials: HTTPAuthorizationCredentials | None, settings: Settings) -> None:
    if credentials is None:
        raise HTTPException(401, "a bearer token is required (Authorization: Bearer <token>)",
                            headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(credentials.credentials.encode(), settings.token.encode()):
        raise HTTPException(401, "wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


async def require_token(settings: Annotated[Settings, Depends(get_settings)],
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """Write endpoints: the token is always required."""
    _check_token(credentials, settings)


async def inspect_token(settings: Annotated[Settings, Depends(get_settings)],
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """Inspection and history: the token is required only with ``token_on_inspect``."""
    if settings.token_on_inspect:
        _check_token(credentials, settings)


async def image_body(request: Request) -> bytes:
    """The raw PNG / TIFF bytes of an inspection request."""
    kind = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if kind not in IMAGE_TYPES:
        raise HTTPException(415, f"content type {kind!r}: send the raw image as one of {', '.join(IMAGE_TYPES)}")
    body = await request.body()  # at most max_body_bytes (app.BodyLimit)
    if not body:
        raise HTTPException(422, "empty body: send the raw PNG or TIFF bytes")
    return body
