"""Shadow and canary phases of a candidate model, its comparison with production, and the guardrail.

Only one experiment runs at a time. **Shadow**: production decides every image; the candidate scores each
one after the answer is sent (``shadow_scores``), so it costs CPU but adds no wait to the response.
**Canary**: a share of wafers (default 10%) is decided by the candidate, chosen by a hash of the experiment
id and ``wafer_id``, so all images of a wafer go to one model. The running experiment is a database row;
replicas follow it as they follow promotions (:meth:`Experiments.sync`).

The **guardrail** ends an experiment (status ``rolled_back``) when the candidate's miss rate, estimated
from reviewed images by :func:`fabguard.serve.review.estimate`, is above ``guardrail_max_fnr`` with 95%
confidence (the interval's lower bound above the limit): a fire on evidence, not on one unlucky label.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import sqlalchemy as sa

from fabguard.errors import InputError
from fabguard.serve import db
from fabguard.serve.config import Settings
from fabguard.serve.metrics import Metrics
from fabguard.serve.registry import Conflict, Loaded, NotFound, Registry

log = logging.getLogger("fabguard.serve")
MODES = ("shadow", "canary")
ALPHA = 0.01  # the case study's significance level for calling a candidate better or worse


@dataclass(frozen=True)
class Running:
    """The running experiment as the inference path reads it (swapped by one assignment)."""

    id: int
    mode: str
    share: float
    candidate: Loaded
    baseline: str

    def decides(self, wafer_id: str) -> bool:
        """Whether the candidate decides this wafer (canary only)."""
        return self.mode == "canary" and canary_bucket(self.id, wafer_id) < self.share


def canary_bucket(experiment_id: int, wafer_id: str) -> float:
    """A wafer's place in [0, 1), uniform over wafers and fixed for one experiment."""
    digest = hashlib.sha256(f"{experiment_id}:{wafer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def event(connection, kind: str, version: str | None, **detail) -> None:
    """Append to the event log the on-call engineer reads (``GET /api/v1/events``)."""
    connection.execute(db.events.insert().values(at=datetime.now(timezone.utc), kind=kind, version=version,
                                                 detail=detail))


class Experiments:
    def __init__(self, engine: sa.Engine, registry: Registry, settings: Settings, metrics: Metrics):
        self.engine, self.registry, self.settings, self.metrics = engine, registry, settings, metrics
        self.running: Running | None = None
        self._lock = threading.Lock()

    # --- records ---------------------------------------------------------------------------------------
    def get(self, experiment_id: int) -> dict:
        with self.engine.connect() as c:
            row = c.execute(sa.select(db.experiments).where(db.experiments.c.id == experiment_id)).mappings().first()
        if row is None:
            raise NotFound(f"no experiment {experiment_id}")
        return dict(row)

    def list(self, limit: int = 100) -> list[dict]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(db.experiments).order_by(db.experiments.c.id.desc()).limit(limit)).mappings()
            return [dict(r) for r in rows]

    def _running_row(self, connection) -> dict | None:
        row = connection.execute(sa.select(db.experiments).where(db.experiments.c.status == "running")
                                 .order_by(db.experiments.c.id.desc()).limit(1)).mappings().first()
        return dict(row) if row else None

    # --- changes ---------------------------------------------------------------------------------------
    def start(self, candidate: str, mode: str, share: float | None = None) -> dict:
        """Start a shadow or canary phase of ``candidate`` beside the serving version."""
        if mode not in MODES:
            raise InputError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
        share = self.settings.canary_share if share is None else share
        if mode == "canary" and not (isinstance(share, (int, float)) and 0 < share < 1):
            raise InputError(f"canary share must be in (0, 1), got {share!r}")
        self.registry.get(candidate)  # 404 for an unknown version
        serving = self.registry.promoted()
        if serving is None:
            raise Conflict("no version is serving: promote one before starting an experiment")
        if candidate == serving:
            raise Conflict(f"{candidate} is the serving version; a candidate must be another one")
        loaded = self.registry.load(candidate)  # a model that cannot load never starts an experiment
        with self._lock, self.engine.begin() as c:
            if c.dialect.name == "postgresql":
                c.execute(sa.text("SELECT pg_advisory_xact_lock(7243920002)"))
            if (other := self._running_row(c)) is not None:
                raise Conflict(f"experiment {other['id']} ({other['mode']} of {other['candidate']}) is running; "
                               "stop it first")
            experiment_id = c.execute(db.experiments.insert().values(
                candidate=candidate, baseline=serving, mode=mode, share=share if mode == "canary" else 0.0,
                status="running", started_at=datetime.now(timezone.utc))).inserted_primary_key[0]
            event(c, f"{mode}_started", candidate, experiment=experiment_id, baseline=serving)
            self.running = Running(experiment_id, mode, share if mode == "canary" else 0.0, loaded, serving)
        self.metrics.experiment(self.running)
        return self.get(experiment_id)

    def stop(self, experiment_id: int, status: str = "ended", note: str | None = None) -> dict:
        """End an experiment (``ended`` by a person, ``rolled_back`` by the guardrail, ``promoted``)."""
        with self._lock, self.engine.begin() as c:
            row = c.execute(sa.select(db.experiments).where(db.experiments.c.id == experiment_id)).mappings().first()
            if row is None:
                raise NotFound(f"no experiment {experiment_id}")
            if row["status"] != "running":
                raise Conflict(f"experiment {experiment_id} is not running (status {row['status']})")
            c.execute(db.experiments.update().where(db.experiments.c.id == experiment_id)
                      .values(status=status, ended_at=datetime.now(timezone.utc), note=note))
            event(c, f"{row['mode']}_{status}", row["candidate"], experiment=experiment_id, note=note)
            if self.running is not None and self.running.id == experiment_id:
                self.running = None
        self.metrics.experiment(None)
        return self.get(experiment_id)

    def sync(self) -> None:
        """Follow the database: another replica or the CLI may have started or stopped an experiment, and a
        candidate that has been promoted ends its experiment as ``promoted``."""
        with self.engine.connect() as c:
            row = self._running_row(c)
        if row is not None and row["candidate"] == self.registry.promoted():
            try:
                self.stop(row["id"], "promoted")
            except Conflict:  # another replica recorded it first
                pass
        with self._lock:  # read and set together: a stop in between must not be undone by a stale read
            with self.engine.connect() as c:
                row = self._running_row(c)
            current = self.running
            if row is None:
                self.running = None
            elif current is None or current.id != row["id"]:
                self.running = Running(row["id"], row["mode"], row["share"], self.registry.load(row["candidate"]),
                                       row["baseline"])
        if self.running is not current:
            self.metrics.experiment(self.running)

    # --- the guardrail ---------------------------------------------------------------------------------
    def guard(self) -> dict | None:
        """Roll the running candidate back when its estimated miss rate is above the limit with 95%
        confidence; returns what fired, or None."""
        from fabguard.serve import review

        running = self.running
        if running is None:
            return None
        row = self.get(running.id)
        with self.engine.connect() as c:
            found = review.estimate(c, running.candidate.version, since=row["started_at"])
        if found.fnr_low is None or not found.fnr_low > self.settings.guardrail_max_fnr:
            return None
        note = (f"guardrail: estimated FNR {found.fnr:.4f} (95% interval {found.fnr_low:.4f}-{found.fnr_high:.4f}) "
                f"above {self.settings.guardrail_max_fnr}")
        try:
            self.stop(running.id, "rolled_back", note)
        except Conflict:  # another replica fired first
            return None
        with self.engine.begin() as c:
            event(c, "guardrail", running.candidate.version, experiment=running.id, fnr=found.fnr,
                  fnr_low=found.fnr_low, fnr_high=found.fnr_high, limit=self.settings.guardrail_max_fnr)
        self.metrics.guardrail.labels(running.candidate.version).inc()
        log.error("%s: %s rolled back", note, running.candidate.version)
        return {"experiment": running.id, "version": running.candidate.version, "note": note}

    # --- the comparison report ---------------------------------------------------------------------------
    def report(self, experiment_id: int) -> dict:
        """Candidate against production on this experiment's images (see :func:`compare`)."""
        row = self.get(experiment_id)
        with self.engine.connect() as c:
            return compare(c, row, self.settings)


def two_proportions(k1: int, n1: int, k2: int, n2: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test (None without data or variance)."""
    from scipy.stats import norm

    if n1 == 0 or n2 == 0:
        return None
    pooled = (k1 + k2) / (n1 + n2)
    sd = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if sd == 0:
        return 1.0
    return float(2 * norm.sf(abs(k1 / n1 - k2 / n2) / sd))


def _rates(decisions: np.ndarray) -> dict:
    n = len(decisions)
    return {"n": n, **{f"{d.lower()}_rate": (float(np.mean(decisions == d)) if n else None)
                       for d in ("REJECT", "REVIEW")},
            **{f"{d.lower()}s": int(np.sum(decisions == d)) for d in ("REJECT", "REVIEW")}}


def _verdict(p: float | None, candidate: float | None, production: float | None) -> str:
    """A lower REJECT or REVIEW rate is better (fewer false alarms, less manual work) when the miss rate
    holds, which the reviewed-label figures check."""
    if p is None or candidate is None or production is None:
        return "no data"
    if p >= ALPHA:
        return "no significant difference"
    return "candidate better" if candidate < production else "candidate worse"


def compare(c, experiment: dict, settings: Settings) -> dict:
    """REJECT and REVIEW rates with a two-sided two-proportion test (p < 0.01 calls a difference), decision
    agreement and score KS test (shadow: the same images), latency, and miss / false-alarm rates against
    reviewed labels, with the promotion recommendation (on the point estimates; ``caveats`` says where an
    interval still reaches past a target). Shadow compares the two models on the same images;
    canary compares the candidate's wafers with production's wafers over the same period."""
    from scipy.stats import ks_2samp

    from fabguard.serve import review

    ins, sh = db.inspections, db.shadow_scores
    until = experiment["ended_at"] or datetime.now(timezone.utc)
    window = sa.and_(ins.c.created_at >= experiment["started_at"], ins.c.created_at <= until)
    cand, base = experiment["candidate"], experiment["baseline"]
    if experiment["mode"] == "shadow":
        rows = c.execute(sa.select(ins.c.anomaly_score, ins.c.decision, ins.c.inference_time_ms,
                                   sh.c.anomaly_score.label("s_score"), sh.c.decision.label("s_decision"),
                                   sh.c.inference_time_ms.label("s_ms"))
                         .join(sh, sa.and_(sh.c.inspection_id == ins.c.id, sh.c.version == cand))
                         .where(window, ins.c.model_version == base)).all()
        prod = np.array([(r[0], r[2]) for r in rows], float).reshape(-1, 2)
        other = np.array([(r[3], r[5]) for r in rows], float).reshape(-1, 2)
        prod_dec, cand_dec = np.array([r[1] for r in rows]), np.array([r[4] for r in rows])
    else:
        rows = c.execute(sa.select(ins.c.anomaly_score, ins.c.inference_time_ms, ins.c.decision, ins.c.arm)
                         .where(window, ins.c.model_version.in_([base, cand]))).all()
        on = np.array([r[3] == "canary" for r in rows], bool)
        values = np.array([(r[0], r[1]) for r in rows], float).reshape(-1, 2)
        decisions = np.array([r[2] for r in rows])
        prod, other, prod_dec, cand_dec = values[~on], values[on], decisions[~on], decisions[on]
    p_rates, c_rates = _rates(prod_dec), _rates(cand_dec)
    tests = {}
    for d in ("reject", "review"):
        p = two_proportions(c_rates[f"{d}s"], c_rates["n"], p_rates[f"{d}s"], p_rates["n"])
        tests[d] = {"p_value": p, "verdict": _verdict(p, c_rates[f"{d}_rate"], p_rates[f"{d}_rate"])}
    ks = ks_2samp(other[:, 0], prod[:, 0]) if len(prod) and len(other) else None
    labelled = {v: review.estimate(c, v, since=experiment["started_at"], until=until).as_dict() for v in (cand, base)}
    targets = {"fnr": settings.target_fnr, "fpr": settings.target_fpr}
    mine = labelled[cand]
    reasons = []
    if mine["fnr"] is None or mine["fpr"] is None:
        reasons.append("no reviewed labels yet for the candidate's images")
    else:
        if mine["fnr"] > targets["fnr"]:
            reasons.append(f"estimated FNR {mine['fnr']:.4f} above the target {targets['fnr']}")
        if mine["fpr"] > targets["fpr"]:
            reasons.append(f"estimated FPR {mine['fpr']:.4f} above the target {targets['fpr']}")
    reasons += [f"{d.upper()} rate significantly higher (p = {t['p_value']:.2g})" for d, t in tests.items()
                if t["verdict"] == "candidate worse"]
    if min(p_rates["n"], c_rates["n"]) < settings.compare_min_images:
        reasons.append(f"fewer than {settings.compare_min_images} images per model")
    caveats = [f"{k.upper()} interval's upper end {mine[f'{k}_high']:.4f} is above the target {targets[k]}: the "
               "labels so far cannot confirm it (more audited images narrow it)"
               for k in ("fnr", "fpr") if mine[f"{k}_high"] is not None and mine[f"{k}_high"] > targets[k]]
    latency = {name: ({"p50": float(np.percentile(v[:, 1], 50)), "p99": float(np.percentile(v[:, 1], 99))}
                      if len(v) else None) for name, v in (("candidate", other), ("production", prod))}
    return {"experiment": experiment, "candidate": {"version": cand, **c_rates}, "production": {"version": base, **p_rates},
            "tests": tests, "alpha": ALPHA,
            "agreement": float(np.mean(prod_dec == cand_dec)) if experiment["mode"] == "shadow" and len(rows) else None,
            "score_ks": {"statistic": float(ks.statistic), "p_value": float(ks.pvalue)} if ks else None,
            "inference_ms": latency, "labelled": labelled, "targets": targets,
            "recommend_promotion": not reasons, "reasons": reasons, "caveats": caveats}
