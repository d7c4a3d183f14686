"""The model registry over HTTP: list, register, promote, roll back (writes need the bearer token)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Path, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from fabguard.errors import InputError
from fabguard.serve.app import Service
from fabguard.serve.dependencies import get_service, require_token
from fabguard.serve.registry import VERSION
from fabguard.serve.schemas import ModelRecord, Problem

router = APIRouter(prefix="/models", tags=["models"],
                   responses={401: {"model": Problem}, 404: {"model": Problem}, 409: {"model": Problem},
                              422: {"model": Problem}})
VERSION_PARAM = Path(pattern=VERSION.pattern, description="<name>-v<major>.<minor>.<patch>")


@router.get("", response_model=list[ModelRecord])
async def list_models(service: Annotated[Service, Depends(get_service)]) -> list[ModelRecord]:
    """Every registered version, oldest first; ``serving`` marks the promoted one."""
    return [ModelRecord(**m) for m in await run_in_threadpool(service.registry.list)]


@router.post("", response_model=ModelRecord, status_code=201, dependencies=[Depends(require_token)],
             responses={413: {"model": Problem}})
async def register(service: Annotated[Service, Depends(get_service)],
                   version: Annotated[str, Form(pattern=VERSION.pattern)],
                   report: Annotated[str, Form(description="the evaluation report, a JSON object")],
                   artifact: Annotated[UploadFile, File(description="the exported ONNX artifact")]) -> ModelRecord:
    """Register an exported ONNX artifact with its evaluation report (AUROC, AUPRC, FNR@FPR5%, latency)."""
    try:
        parsed = json.loads(report)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an integer of over 4300 digits
        raise HTTPException(422, f"report: not JSON ({str(exc) or 'nested too deeply'})") from None
    with tempfile.TemporaryDirectory(dir=service.settings.home) as folder:
        path = FilePath(folder) / "upload.onnx"
        with open(path, "wb") as out:
            while chunk := await artifact.read(1 << 20):
                out.write(chunk)
        try:
            record = await run_in_threadpool(service.registry.register, path, version, parsed)
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
