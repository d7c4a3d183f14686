"""Model registry: versioned ONNX artifacts with their evaluation reports, a validation gate on promotion,
and the serving model switched atomically.

Versions are named ``<name>-v<major>.<minor>.<patch>`` (``vae-wafer-v2.3.1``). An artifact is stored in
the database with its SHA-256 (so every replica serves the same bytes) and cached as
``home/models/<version>.onnx``; loading re-checks the hash: a changed cache file is fetched again, a
changed database copy is refused. Promotions are an append-only table: the serving version is the newest row,
and rollback appends the version that served before it (as MLflow moves an alias back). Replicas sharing
one database follow a promotion by re-reading that row (:meth:`Registry.sync`). The last ``keep_loaded``
versions stay loaded (LRU), so a rollback to any of them swaps one reference: no load, no failed request.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from fabguard.errors import InputError, ModelFileError
from fabguard.serve import db
from fabguard.serve.config import Settings

VERSION = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_-]{0,62})-v(?P<major>[0-9]{1,4})\.(?P<minor>[0-9]{1,4})\.(?P<patch>[0-9]{1,4})$")
REPORT_KEYS = ("auroc", "auprc", "fnr_at_fpr5", "latency_ms_p50")
BUNDLED = Path(__file__).with_name("default_model")


class NotFound(InputError):
    """An unknown model version (HTTP 404)."""


class Conflict(InputError):
    """A request the registry's state refuses: a version registered twice, a gate not met, nothing to roll
    back to (HTTP 409)."""


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION.fullmatch(version):  # '$' also matches before a final newline
        raise InputError(f"model version {version!r} must look like <name>-v<major>.<minor>.<patch> "
                         "(lower-case name of letters, digits, '-' or '_'; e.g. vae-wafer-v2.3.1)")
    return version


MAX_REPORT_DEPTH = 32  # nesting of an evaluation report (JSON); deeper ones cannot be answered back


def check_report(report) -> dict:
    """The evaluation report with the gate's keys present, finite and in range, and as a whole storable
    and answerable as strict JSON: no NaN or infinity, no text that is not Unicode (a lone surrogate
    escape), nested at most ``MAX_REPORT_DEPTH`` deep."""
    if not isinstance(report, dict):
        raise InputError("evaluation report must be a JSON object")
    bad = [k for k in REPORT_KEYS if not _finite_number(report.get(k))]
    if bad:
        raise InputError(f"evaluation report: {', '.join(bad)} missing or not a finite number "
                         f"(needs {', '.join(REPORT_KEYS)})")
    bad = [k for k in ("auroc", "auprc", "fnr_at_fpr5") if not 0 <= report[k] <= 1] + \
        (["latency_ms_p50"] if report["latency_ms_p50"] < 0 else [])
    if bad:
        raise InputError(f"evaluation report: {', '.join(bad)} out of range (auroc, auprc and fnr_at_fpr5 in "
                         "[0, 1]; latency_ms_p50 >= 0)")
    if _depth(report) > MAX_REPORT_DEPTH:
        raise InputError(f"evaluation report: nested more than {MAX_REPORT_DEPTH} deep")
    try:
        json.dumps(report, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError) as exc:
        raise InputError(f"evaluation report: not storable as JSON ({str(exc)[:120]})") from None
    return report


def _depth(value) -> int:
    """How deep lists and objects nest in ``value`` (a parsed JSON document), counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _finite_number(value) -> bool:
    """A JSON number that is a finite float (an integer too large for a float is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def gate_failures(report: dict, settings: Settings) -> list[str]:
    """What keeps ``report`` from passing the validation gate (empty: it passes)."""
    checks = [("auroc", report["auroc"] >= settings.gate_min_auroc, f">= {settings.gate_min_auroc}"),
              ("auprc", report["auprc"] >= settings.gate_min_auprc, f">= {settings.gate_min_auprc}"),
              ("fnr_at_fpr5", report["fnr_at_fpr5"] <= settings.gate_max_fnr_at_fpr5,
               f"<= {settings.gate_max_fnr_at_fpr5}"),
              ("latency_ms_p50", report["latency_ms_p50"] <= settings.gate_max_latency_ms,
               f"<= {settings.gate_max_latency_ms}")]
    return [f"{key} = {report[key]:.4g}, needs {need}" for key, ok, need in checks if not ok]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Loaded:
    """A loaded model: what one batch is scored with, and the version every response of it names."""

    version: str
    inspector: object  # fabguard.anomaly.Inspector
    outputs: tuple[str, ...]


class Registry:
    """The registry over one database and one ``home`` folder, with the loaded models of this process."""

    def __init__(self, engine: sa.Engine, settings: Settings):
        self.engine, self.settings = engine, settings
        self.folder = settings.home / "models"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()  # the loaded-model cache
        self._switch = threading.Lock()  # promote, rollback and sync: one switch at a time
        self.serving: Loaded | None = None  # swapped by one assignment: a batch reads it once

    # --- records ---------------------------------------------------------------------------------------
    def list(self) -> list[dict]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(db.models).order_by(db.models.c.registered_at)).mappings().all()
        current = self.promoted()
        return [self._describe(r, current) for r in rows]

    def get(self, version: str) -> dict:
        check_version(version)
        with self.engine.connect() as c:
            row = c.execute(sa.select(db.models).where(db.models.c.version == version)).mappings().first()
        if row is None:
            raise NotFound(f"model version {version!r} is not registered")
        return self._describe(row, self.promoted())

    def _describe(self, row, current: str | None) -> dict:
        return {"version": row["version"], "name": row["name"], "sha256": row["sha256"], "report": row["report"],
                "registered_at": row["registered_at"], "serving": row["version"] == current,
                "loaded": row["version"] in self._loaded}

    def promoted(self) -> str | None:
        """The version the database says is serving."""
        with self.engine.connect() as c:
            return c.execute(sa.select(db.promotions.c.version).order_by(db.promotions.c.id.desc())
                             .limit(1)).scalar()

    # --- changes ---------------------------------------------------------------------------------------
    def register(self, artifact: Path, version: str, report: dict) -> dict:
        """Store ``artifact`` as ``version`` with its evaluation ``report`` (bytes and hash in the database,
        a cached copy in ``home/models``); it is opened and warmed once first, so a file that cannot serve
        is refused here, not at promotion."""
        from fabguard.anomaly.runtime import Inspector

        check_version(version)
        check_report(report)
        metadata = Inspector.read(artifact)
        with self.engine.connect() as c:
            if c.execute(sa.select(db.models.c.version).where(db.models.c.version == version)).first():
                raise Conflict(f"model version {version!r} is already registered; versions are immutable")
        data = Path(artifact).read_bytes()
        self._cache(version, data)
        try:
            self._open(version, self.folder / f"{version}.onnx", check=True)
        except InputError:
            (self.folder / f"{version}.onnx").unlink()
            raise
        row = {"version": version, "name": VERSION.match(version)["name"], "sha256": hashlib.sha256(data).hexdigest(),
               "report": report, "metadata": _jsonable(metadata),
               "registered_at": datetime.now(timezone.utc)}
        try:
            with self.engine.begin() as c:
                c.execute(db.models.insert().values(**row))
                c.execute(db.artifacts.insert().values(version=version, data=data))
        except sa.exc.IntegrityError:
            raise Conflict(f"model version {version!r} is already registered; versions are immutable") from None
        return self.get(version)

    def promote(self, version: str, force: bool = False) -> dict:
        """Make ``version`` serve, if its report passes the gate (``force`` skips the gate: the on-call's
        override, recorded as such)."""
        record = self.get(version)
        failures = gate_failures(record["report"], self.settings)
        if failures and not force:
            raise Conflict(f"validation gate refuses {version}: {'; '.join(failures)}")
        self._switch_to(version, "force" if failures else "promote")
        return self.get(version)

    def rollback(self) -> dict:
        """Serve again the version that served before the current one."""
        with self.engine.connect() as c:
            history = c.execute(sa.select(db.promotions.c.version).order_by(db.promotions.c.id.desc())).scalars().all()
        if not history:
            raise Conflict("nothing to roll back: no version has been promoted")
        previous = next((v for v in history if v != history[0]), None)
        if previous is None:
            raise Conflict(f"nothing to roll back to: {history[0]} is the only version ever promoted")
        self._switch_to(previous, "rollback")
        return self.get(previous)

    def _switch_to(self, version: str, action: str) -> None:
        """Load first (a model that cannot load never becomes the promoted one), record, then serve."""
        loaded = self.load(version)
        with self._switch:
            with self.engine.begin() as c:
                c.execute(db.promotions.insert().values(version=version, action=action,
                                                        at=datetime.now(timezone.utc)))
            self.serving = loaded

    # --- loading ---------------------------------------------------------------------------------------
    def load(self, version: str) -> Loaded:
        with self._lock:
            if version in self._loaded:
                self._loaded.move_to_end(version)
                return self._loaded[version]
        with self.engine.connect() as c:
            expected = c.execute(sa.select(db.models.c.sha256)
                                 .where(db.models.c.version == check_version(version))).scalar()
            if expected is None:
                raise NotFound(f"model version {version!r} is not registered")
            path = self.folder / f"{version}.onnx"
            if not path.is_file() or sha256(path) != expected:
                data = c.execute(sa.select(db.artifacts.c.data).where(db.artifacts.c.version == version)).scalar()
                if hashlib.sha256(data).hexdigest() != expected:
                    raise Conflict(f"model {version}: the stored artifact's SHA-256 differs from the registered one")
                self._cache(version, data)
        loaded = self._open(version, path)
        with self._lock:
            self._loaded[version] = loaded
            while len(self._loaded) > self.settings.keep_loaded:
                oldest = next(v for v in self._loaded if self.serving is None or v != self.serving.version)
                del self._loaded[oldest]
        return loaded

    def _cache(self, version: str, data: bytes) -> None:
        from fabguard.outputs import atomic_path

        with atomic_path(self.folder / f"{version}.onnx") as tmp:
            tmp.write_bytes(data)

    def _open(self, version: str, path: Path, check: bool = False) -> Loaded:
        """Open and warm up ``version``; a graph failing at run time is a ModelFileError. ``check`` (at
        registration): its outputs must also fit the service and its scores be finite, else every inspection
        would fail; versions registered before these checks still load."""
        from fabguard.anomaly.runtime import LATENT, Inspector

        inspector = Inspector(path, providers=["CPUExecutionProvider"], max_batch=self.settings.max_batch,
                              threads=self.settings.threads)
        names = tuple(o.name for o in inspector.session.get_outputs())
        size, n = inspector.input_size, min(2, self.settings.max_batch)
        images = np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32)  # not blank: no 0 / 0
        try:
            outputs = dict(zip(names, inspector.run(inspector.session, images, n)))
        except Exception as exc:  # noqa: BLE001  (ONNX Runtime raises its own types for a graph failing at run time)
            raise ModelFileError(f"model {version}: its warm-up run failed "
                                 f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
                                 ) from None
        shapes = {k: v.shape for k, v in outputs.items()}
        if check and (shapes["score"] != (n,) or shapes["heatmap"] != (n, size, size)
                      or (LATENT in shapes and (len(shapes[LATENT]) < 2 or shapes[LATENT][0] != n))):
            raise ModelFileError(f"model {version}: for {n} images of {size} x {size} its graph gives "
                                 + ", ".join(f"{k} {list(v)}" for k, v in shapes.items())
                                 + f"; the service needs score [{n}], heatmap [{n}, {size}, {size}]"
                                 + (f" and {LATENT} [{n}, ...]" if LATENT in shapes else ""))
        if check and not np.isfinite(outputs["score"]).all():
            raise ModelFileError(f"model {version}: its scores of {n} test images are {outputs['score'].tolist()}, "
                                 "not finite numbers")
        return Loaded(version, inspector, names)

    def loaded_versions(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def sync(self) -> None:
        """Serve what the database says is promoted (another replica or the CLI may have changed it)."""
        with self._switch:
            version = self.promoted()
            if version is not None and (self.serving is None or self.serving.version != version):
                self.serving = self.load(version)

    def ensure_default(self) -> None:
        """On a registry with no model: register and promote the bundled default model."""
        with self.engine.connect() as c:
            empty = c.execute(sa.select(sa.func.count()).select_from(db.models)).scalar() == 0
        if empty:
            import json

            from fabguard.serve.bundle import VERSION as DEFAULT

            report = json.loads((BUNDLED / "report.json").read_text())
            try:
                self.register(BUNDLED / f"{DEFAULT}.onnx", DEFAULT, report)
            except Conflict:  # another replica registered it at the same moment
                pass
            if self.promoted() is None:
                self.promote(DEFAULT)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))
