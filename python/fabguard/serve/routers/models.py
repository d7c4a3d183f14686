"""The model registry over HTTP: list, register, promote, roll back (writes need the bearer token)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from fabguard.errors import InputError
from fabguard.serve.app import Service
from fabguard.serve.dependencies import get_service, require_token
from fabguard.serve.registry import VERSION, check_version
from fabguard.serve.schemas import ModelRecord, Problem

router = APIRouter(prefix="/models", tags=["models"],
                   responses={401: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem},
                              422: {"model": Problem}})
VERSION_PARAM = Path(pattern=VERSION.pattern, description="<name>-v<major>.<minor>.<patch>")


@router.get("", response_model=list[ModelRecord])
async def list_models(service: Annotated[Service, Depends(get_service)]) -> list[ModelRecord]:
    """Every registered version, oldest first; ``serving`` marks the promoted one."""
    return [ModelRecord(**m) for m in await run_in_threadpool(service.registry.list)]


FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["version", "report", "artifact"], "properties": {
        "version": {"type": "string", "pattern": VERSION.pattern, "description": "<name>-v<major>.<minor>.<patch>"},
        "report": {"type": "string", "description": "the evaluation report, a JSON object"},
        "artifact": {"type": "string", "format": "binary", "description": "the exported ONNX artifact"}}}}}}}


@router.post("", response_model=ModelRecord, status_code=201, dependencies=[Depends(require_token)],
             openapi_extra=FORM, responses={400: {"model": Problem}, 413: {"model": Problem}})
async def register(request: Request, service: Annotated[Service, Depends(get_service)]) -> ModelRecord:
    """Register an exported ONNX artifact with its evaluation report (AUROC, AUPRC, FNR@FPR5%, latency).
    The form is read here, after the token is checked: declared as form parameters, FastAPI would take in
    the whole upload (up to 2 GiB) before refusing a client without the token."""
    async with request.form(max_files=1, max_fields=2) as form:
        version, report, artifact = (form.get(k) for k in ("version", "report", "artifact"))
        if not (isinstance(version, str) and isinstance(report, str) and isinstance(artifact, UploadFile)):
            raise HTTPException(422, "send a multipart form: version and report (text), artifact (the ONNX file)")
        try:
            parsed = json.loads(report)
        except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an integer of over 4300 digits
            raise HTTPException(422, f"report: not JSON ({exc})") from None
        return await _register(service, version, parsed, artifact)


async def _register(service: Service, version: str, report: dict, artifact: UploadFile) -> ModelRecord:
    """The upload copied under the home folder, then registered; both on a worker thread (up to 2 GiB to
    copy, and a model to load and warm), not on the event loop the inspections need."""
    check_version(version)  # before copying anything
    with tempfile.TemporaryDirectory(dir=service.settings.home) as folder:
        path = FilePath(folder) / "upload.onnx"
        with open(path, "wb") as out:
            await run_in_threadpool(shutil.copyfileobj, artifact.file, out, 1 << 20)
        try:
            record = await run_in_threadpool(service.registry.register, path, version, report)
        except InputError as exc:  # named as the client knows it: the form field, not the server's temporary file
            raise type(exc)(str(exc).replace(str(path), "artifact")) from None
    return ModelRecord(**record)


@router.post("/rollback", response_model=ModelRecord, dependencies=[Depends(require_token)])
async def rollback(service: Annotated[Service, Depends(get_service)]) -> ModelRecord:
    """Serve again the version that served before the current one (it is kept loaded: a reference swap)."""
    return ModelRecord(**await run_in_threadpool(service.registry.rollback))


@router.post("/{version}/promote", response_model=ModelRecord, dependencies=[Depends(require_token)])
async def promote(service: Annotated[Service, Depends(get_service)],
                  version: Annotated[str, VERSION_PARAM],
                  force: Annotated[bool, Query(description="skip the validation gate (recorded)")] = False
                  ) -> ModelRecord:
    """Serve ``version`` from the next batch on, if its report passes the validation gate."""
    return ModelRecord(**await run_in_threadpool(service.registry.promote, version, force))
