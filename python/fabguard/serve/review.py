"""Human review: which inspections go to the inspectors' queue, their labels, and what the labels say about
any model's decisions (the case study's daily figures, the guardrail's miss rate, the canary's comparison).

Sampling. Every REVIEW decision is queued; PASS and REJECT decisions are audited at ``audit_pass_rate`` and
``audit_reject_rate``, and REVIEW items get a second inspector at ``second_label_rate``. Each choice is a
hash of the seed, a purpose and the inspection id (reproducible, independent of everything else, no RNG).

Estimation. Inspections of a window are post-stratified into cells (logged decision h, the evaluated model's
decision d); every cell's size is known, because every image has a logged decision and the evaluated model's
decision (its own, or its shadow score). Within a logged decision the labelled images are a random sample
(the hash; the queue order does not depend on the label), so a cell's labelled images estimate its share
of defective images: the Horvitz-Thompson weight of a labelled image is its cell's size over its cell's
labelled count (1 where the cell was labelled whole). A label is 0 (normal) or 1 (defective); an image with
two disagreeing labels counts 1/2: the estimand is the answer of a randomly chosen inspector.

Intervals. Each cell's defective share gets the Jeffreys posterior Beta(x + 1/2, n - x + 1/2), and the
cell's unlabelled images are drawn from it (Binomial, so a cell labelled whole is known exactly); the
interval is the equal-tailed quantiles of the rate over the draws, with the lower end 0 when the point
estimate is 0 and the upper end 1 when it is 1 (Brown, Cai & DasGupta's correction of the Jeffreys
interval). Coverage is checked by simulation in ``tests/serve/test_serve_review.py``. A rate is None when
a cell it needs has no labelled image in its whole logged decision (e.g. FNR without audited PASS images).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import sqlalchemy as sa

from fabguard.errors import InputError
from fabguard.serve import db
from fabguard.serve.registry import Conflict, NotFound

DECISIONS = ("PASS", "REVIEW", "REJECT")
LABELS = ("normal", "defective")
PASS, REJECT = 0, 2
MIN_AGREEMENT_ITEMS = 10  # double-labelled REVIEW items needed before their agreement corrects the labels
LABEL_ERROR_DAYS = 30  # the inspectors' error rate is measured over this many days before a window's end
PRIOR_LABEL_ERROR = 0.124  # until measured: the case study's 78% agreement on REVIEW images, (1-q)^2 + q^2


def chosen(seed: int, purpose: str, inspection_id: str, rate: float) -> bool:
    """Whether ``inspection_id`` falls in a ``rate`` sample: the first 8 bytes of SHA-256 of the seed, the
    purpose and the id, as a fraction of 2**64 (uniform and independent across ids and purposes)."""
    if rate <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{purpose}:{inspection_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < rate * 2**64


def plan(inspection_id: str, decision: str, settings) -> tuple[str, int] | None:
    """(reason, labels wanted) of an inspection's queue item, or None when it is not queued."""
    if decision == "REVIEW":
        return "review", 2 if chosen(settings.review_seed, "second", inspection_id, settings.second_label_rate) else 1
    rate = {"PASS": settings.audit_pass_rate, "REJECT": settings.audit_reject_rate}.get(decision)
    if rate is None:
        raise ValueError(f"inspection {inspection_id}: decision {decision!r} is not one of {DECISIONS}")
    return ("audit", 1) if chosen(settings.review_seed, "audit", inspection_id, rate) else None


def queue_for_review(connection: sa.Connection, row: dict, settings) -> None:
    """Queue the inspection ``row`` (the inspections row just inserted) if it is reviewed or audited; runs
    inside the inspection's own transaction, so a logged inspection and its queue item commit together."""
    planned = plan(row["id"], row["decision"], settings)
    if planned is not None:
        connection.execute(db.review_items.insert().values(
            inspection_id=row["id"], reason=planned[0], labels_wanted=planned[1], created_at=row["created_at"]))


def record_label(connection: sa.Connection, inspection_id: str, inspector: str, label: str,
                 defect_type: str | None = None, now: datetime | None = None) -> dict:
    """Record one inspector's label of a queued inspection; returns the stored row with ``labels`` (how many
    the item has now) and ``labels_wanted``.

    Refused: an unknown inspection (NotFound, 404); one not in the queue (Conflict, 409: a label outside the
    sample has no known inclusion probability and would bias every estimate); an item that already has the
    labels it wants, or a second label by the same inspector (Conflict, 409); a label other than normal /
    defective, or a defect type on a normal label (InputError, 422). Race-free: concurrent labels of an item
    wait for each other (the item's lock below), and the same inspector's twice is refused by the unique
    constraint on (inspection_id, inspector) should it slip past the check."""
    if label not in LABELS:
        raise InputError(f"label {label!r}: one of {', '.join(LABELS)}")
    if defect_type is not None and label != "defective":
        raise InputError("defect_type is only given with the label 'defective'")
    # first, before any read: this (no-op) UPDATE takes the item's row lock on PostgreSQL and the database's
    # write lock on SQLite until the caller's transaction ends, so concurrent labels of the item are counted
    # and inserted one at a time and never exceed labels_wanted (a SELECT ... FOR UPDATE is ignored by SQLite)
    q = db.review_items
    connection.execute(q.update().where(q.c.inspection_id == inspection_id).values(labels_wanted=q.c.labels_wanted))
    item = connection.execute(sa.select(db.review_items).where(
        db.review_items.c.inspection_id == inspection_id)).mappings().first()
    if item is None:
        if connection.execute(sa.select(db.inspections.c.id).where(db.inspections.c.id == inspection_id)).first():
            raise Conflict(f"inspection {inspection_id} is not in the review queue (only REVIEW decisions and "
                           "the audit sample are labelled)")
        raise NotFound(f"no inspection {inspection_id}")
    by = connection.execute(sa.select(db.reviews.c.inspector).where(
        db.reviews.c.inspection_id == inspection_id)).scalars().all()
    if inspector in by:
        raise Conflict(f"inspector {inspector!r} already labelled inspection {inspection_id}")
    if len(by) >= item["labels_wanted"]:
        raise Conflict(f"inspection {inspection_id} already has the {item['labels_wanted']} label(s) it wants")
    row = {"inspection_id": inspection_id, "inspector": inspector, "label": label, "defect_type": defect_type,
           "created_at": now or datetime.now(timezone.utc)}
    try:
        row["id"] = connection.execute(db.reviews.insert().values(**row)).inserted_primary_key[0]
    except sa.exc.IntegrityError:  # the same inspector, concurrently (the caller's transaction rolls back)
        raise Conflict(f"inspector {inspector!r} already labelled inspection {inspection_id}") from None
    return {**row, "labels": len(by) + 1, "labels_wanted": item["labels_wanted"]}


def image_ref(connection: sa.Connection, inspection_id: str) -> str:
    """The stored image's path under the home folder (NotFound: unknown inspection or image not kept)."""
    found = connection.execute(sa.select(db.inspections.c.image_ref).where(
        db.inspections.c.id == inspection_id)).first()
    if found is None:
        raise NotFound(f"no inspection {inspection_id}")
    if found.image_ref is None:
        raise NotFound(f"inspection {inspection_id}: the image was not stored (store_images is off)")
    return found.image_ref


def waiting(connection: sa.Connection) -> int:
    """Queue items that still want a label."""
    given = sa.select(sa.func.count()).where(db.reviews.c.inspection_id == db.review_items.c.inspection_id)
    return connection.execute(sa.select(sa.func.count()).select_from(db.review_items).where(
        given.scalar_subquery() < db.review_items.c.labels_wanted)).scalar_one()


def next_items(connection: sa.Connection, inspector: str, limit: int) -> list[dict]:
    """Queue items that want a label and that ``inspector`` has not labelled: REVIEW decisions first (a
    wafer waits on them), then audits, oldest first; with the inspection and the labels so far."""
    r, i, q = db.reviews, db.inspections, db.review_items
    labels = sa.select(sa.func.count()).where(r.c.inspection_id == q.c.inspection_id).scalar_subquery()
    mine = sa.exists().where(r.c.inspection_id == q.c.inspection_id, r.c.inspector == inspector)
    shown = [i.c[k] for k in ("wafer_id", "inspection_point", "model_version", "anomaly_score", "decision",
                              "confidence", "image_ref", "heatmap_ref")]
    query = (sa.select(q.c.inspection_id, q.c.reason, q.c.labels_wanted, q.c.created_at, labels.label("labels"),
                       *shown)
             .join(i, i.c.id == q.c.inspection_id)
             .where(labels < q.c.labels_wanted, ~mine)
             .order_by((q.c.reason != "review"), q.c.created_at, q.c.inspection_id).limit(limit))
    return [dict(m) for m in connection.execute(query).mappings()]


@dataclass(frozen=True)
class Cells:
    """Counts of a window on the 3 x 3 grid (logged decision, evaluated model's decision), in DECISIONS
    order: ``size`` images, ``labelled`` of them with a label, ``defective`` the sum of their labels."""

    size: np.ndarray
    labelled: np.ndarray
    defective: np.ndarray


@dataclass(frozen=True)
class Rate:
    value: float | None
    low: float | None
    high: float | None


NONE = Rate(None, None, None)


def _point(cells: Cells, needed: np.ndarray) -> np.ndarray | None:
    """Estimated defective images per cell; None when a needed cell's whole logged decision is unlabelled.
    A needed cell with no label of its own borrows its logged decision's share (collapsing)."""
    n, x, size = cells.labelled, cells.defective, cells.size
    share = np.divide(x, n, out=np.zeros_like(x), where=n > 0)
    row_n = n.sum(axis=1, keepdims=True)
    row_share = np.divide(x.sum(axis=1, keepdims=True), row_n, out=np.zeros_like(row_n), where=row_n > 0)
    if np.any(needed & (size > 0) & (np.broadcast_to(row_n, n.shape) == 0)):
        return None
    return size * np.where(n > 0, share, row_share)


def label_error(items: int, agree: int, min_items: int = MIN_AGREEMENT_ITEMS,
                prior: float = PRIOR_LABEL_ERROR) -> float:
    """Per-inspector error rate ``q`` implied by two-inspector agreement ``a`` when both err independently
    and symmetrically: a = (1 - q)^2 + q^2, so q = (1 - sqrt(2a - 1)) / 2; ``prior`` with fewer than
    ``min_items`` double-labelled items; 0 when a <= 0.5 (agreement at chance level: no correction is
    possible)."""
    if items < min_items:
        return prior
    if 2 * agree <= items:
        return 0.0
    return float((1 - np.sqrt(2 * agree / items - 1)) / 2)


def rates(cells: Cells, level: float = 0.95, draws: int = 4000, seed: int = 0,
          errors: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> dict[str, Rate]:
    """FNR, FPR and REJECT override rate of the evaluated model's decisions, with ``level`` intervals.

    fnr: defective images it PASSed / defective images. fpr: normal images it REJECTed / normal images.
    override: normal images among those it REJECTed (what inspectors overturn). A REVIEW is neither a miss
    nor a false alarm: a person decides it.

    ``errors``: per-inspector label error rate of the images of each logged decision (PASS, REVIEW,
    REJECT). Labelled-defective counts are corrected for it (Rogan and Gladen 1978: x' = (x - q n) /
    (1 - 2q), kept in [0, n]); without it, the 22% disagreement the case study reports on REVIEW images
    turns normal REVIEW images that a candidate PASSes into apparent misses."""
    size = cells.size.astype(float)
    n = cells.labelled.astype(float)
    x = cells.defective.astype(float)
    if np.any(n > size) or np.any(x > n) or np.any(x < 0):
        raise ValueError("cells: labelled must be <= size and 0 <= defective <= labelled")
    q = np.asarray(errors, float)[:, None]
    if np.any(q < 0) or np.any(q >= 0.5):
        raise ValueError(f"label error rates must be in [0, 0.5), got {errors}")
    x = np.clip((x - q * n) / (1 - 2 * q), 0, n)
    cells = Cells(cells.size, cells.labelled, x)
    everything = size > 0
    passed, rejected = np.zeros((3, 3), bool), np.zeros((3, 3), bool)
    passed[:, PASS] = rejected[:, REJECT] = True
    rng = np.random.default_rng(seed)
    theta = rng.beta(x + 0.5, n - x + 0.5, size=(draws, 3, 3))
    drawn = x + rng.binomial(np.round(size - n).astype(np.int64), theta)  # defective images per cell, per draw

    def total(mask, normal=False, of_size=False):
        """Sum over the ``mask`` cells of defective (or normal, or all) images, for a (..., 3, 3) count."""
        return lambda d: (size + 0 * d if of_size else size - d if normal else d)[..., mask & everything].sum(-1)

    def ratio(num, den, needed) -> Rate:
        point = _point(cells, needed & everything)
        if point is None or den(point) <= 0:
            return NONE
        value = float(num(point) / den(point))
        num_d, den_d = num(drawn), den(drawn)
        kept = den_d > 0  # a draw without any defective (normal) image has no rate
        low, high = np.quantile(num_d[kept] / den_d[kept], [(1 - level) / 2, (1 + level) / 2])
        return Rate(value, 0.0 if value == 0 else float(min(low, value)),
                    1.0 if value == 1 else float(max(high, value)))

    return {"fnr": ratio(total(passed), total(everything), everything),
            "fpr": ratio(total(rejected, normal=True), total(everything, normal=True), everything),
            "override": ratio(total(rejected, normal=True), total(rejected, of_size=True), rejected)}


@dataclass(frozen=True)
class Estimate:
    """The review figures of one window and one model (None where not estimable; see ``notes``)."""

    since: datetime
    until: datetime
    version: str | None
    arm: str | None
    inspections: int
    labelled: int
    fnr: float | None
    fnr_low: float | None
    fnr_high: float | None
    fpr: float | None
    fpr_low: float | None
    fpr_high: float | None
    reject_override: float | None
    reject_override_low: float | None
    reject_override_high: float | None
    agreement: float | None
    agreement_low: float | None
    agreement_high: float | None
    agreement_items: int
    level: float
    cells: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    review_label_error: float = 0.0  # per-inspector error on REVIEW images, from their agreement (see rates)

    def as_dict(self) -> dict:
        return asdict(self)


EARLIEST = datetime.min.replace(tzinfo=timezone.utc)


def before(t: datetime, span: timedelta) -> datetime:
    """``span`` before the UTC time ``t``, from the calendar's first day at most (no inspection is older)."""
    return t - span if t - EARLIEST >= span else EARLIEST


def window(since: datetime | None, until: datetime | None, span: timedelta = timedelta(days=1)
           ) -> tuple[datetime, datetime]:
    """[since, until) of a request in UTC: ``until`` is now when None, ``since`` ``span`` before ``until`` when
    None. InputError naming the parameter for a time off the calendar in UTC or an empty window."""
    until = datetime.now(timezone.utc) if until is None else db.utc(until, "until")
    since = before(until, span) if since is None else db.utc(since, "since")
    if until <= since:
        raise InputError(f"window: until ({until.isoformat()}) must be after since ({since.isoformat()})")
    return since, until


def _population(version: str | None, arm: str | None, since: datetime, until: datetime):
    """(inspection id, logged decision h, evaluated decision d) of the window: every inspection decided by
    ``version`` (all when None), and those it scored in the shadow of another version."""
    i, s = db.inspections, db.shadow_scores
    window = [i.c.created_at >= since, i.c.created_at < until] + ([i.c.arm == arm] if arm else [])
    decided = sa.select(i.c.id.label("id"), i.c.decision.label("h"), i.c.decision.label("d")).where(*window)
    if version is None:
        return decided.subquery()
    decided = decided.where(i.c.model_version == version)
    shadowed = (sa.select(i.c.id.label("id"), i.c.decision.label("h"), s.c.decision.label("d"))
                .join(s, s.c.inspection_id == i.c.id)
                .where(*window, s.c.version == version, i.c.model_version != version))
    return sa.union_all(decided, shadowed).subquery()


def cells_of(connection: sa.Connection, version: str | None, since: datetime, until: datetime,
             arm: str | None = None) -> Cells:
    """The window's :class:`Cells` from the log (labels of queued items only: no others are accepted)."""
    r = db.reviews
    pop = _population(version, arm, since, until)
    per_image = (sa.select(r.c.inspection_id.label("id"),
                           sa.func.avg(sa.case((r.c.label == "defective", 1.0), else_=0.0)).label("y"))
                 .group_by(r.c.inspection_id).subquery())
    query = (sa.select(pop.c.h, pop.c.d, sa.func.count().label("size"), sa.func.count(per_image.c.y).label("n"),
                       sa.func.coalesce(sa.func.sum(per_image.c.y), 0.0).label("x"))
             .select_from(pop.outerjoin(per_image, per_image.c.id == pop.c.id)).group_by(pop.c.h, pop.c.d))
    size, n, x = (np.zeros((3, 3)) for _ in range(3))
    for row in connection.execute(query):
        if row.h not in DECISIONS or row.d not in DECISIONS:
            raise ValueError(f"inspection log: decision {row.h!r} / {row.d!r} is not one of {DECISIONS}")
        cell = DECISIONS.index(row.h), DECISIONS.index(row.d)
        size[cell], n[cell], x[cell] = row.size, row.n, row.x
    return Cells(size, n, x)


def agreement(connection: sa.Connection, version: str | None, since: datetime, until: datetime,
              arm: str | None = None) -> tuple[int, int]:
    """(items with two labels, of which the two agree) among the window's REVIEW items decided by
    ``version``: the case study's inspector agreement on REVIEW cases."""
    i, r, q = db.inspections, db.reviews, db.review_items
    where = [i.c.created_at >= since, i.c.created_at < until, q.c.reason == "review"]
    where += ([i.c.model_version == version] if version else []) + ([i.c.arm == arm] if arm else [])
    per_item = (sa.select(sa.func.count().label("k"), sa.func.count(sa.distinct(r.c.label)).label("kinds"))
                .select_from(r.join(q, q.c.inspection_id == r.c.inspection_id).join(i, i.c.id == r.c.inspection_id))
                .where(*where).group_by(r.c.inspection_id).having(sa.func.count() == 2).subquery())
    items, agree = connection.execute(sa.select(
        sa.func.count(), sa.func.coalesce(sa.func.sum(sa.case((per_item.c.kinds == 1, 1), else_=0)), 0))).one()
    return int(items), int(agree)


def estimate(connection: sa.Connection, version: str | None, since: datetime, until: datetime | None = None, *,
             arm: str | None = None, level: float = 0.95, draws: int = 4000, seed: int = 0,
             prior_error: float = PRIOR_LABEL_ERROR) -> Estimate:
    """The review figures of inspections made in [since, until) (until: now when None) for ``version``'s
    decisions (the logged decisions of all versions when None; a candidate's shadow decisions count as its
    own), optionally of one ``arm`` (production / canary). Labels given later update a past window's
    figures. ``draws`` posterior draws with ``seed`` make the interval (reproducible)."""
    since, until = window(since, until)
    if not 0 < level < 1:
        raise InputError(f"level {level}: between 0 and 1")
    cells = cells_of(connection, version, since, until, arm)
    # inspectors err on images, not on models: their error comes from the last LABEL_ERROR_DAYS of all versions
    measured, agreed = agreement(connection, None, before(until, timedelta(days=LABEL_ERROR_DAYS)), until)
    error = label_error(measured, agreed, prior=prior_error)
    found = rates(cells, level, draws, seed, (0.0, error, 0.0))
    items, agree = agreement(connection, version, since, until, arm)
    notes = [f"REVIEW label error {error:.3f}: " + (
        f"from the agreement of {measured} double-labelled REVIEW items" if measured >= MIN_AGREEMENT_ITEMS else
        f"the prior (fewer than {MIN_AGREEMENT_ITEMS} double-labelled REVIEW items in {LABEL_ERROR_DAYS} days)")]
    if found["fnr"].value is None:
        notes.append("fnr: needs labelled (audited) images of every logged decision with inspections, and a "
                     "defective label")
    if found["fpr"].value is None:
        notes.append("fpr: needs labelled images of every logged decision with inspections, and a normal label")
    if found["override"].value is None:
        notes.append("reject_override: needs REJECTs and labelled (audited) REJECTs")
    from scipy import stats  # here: importing scipy.stats costs the service's start a second

    ci = stats.binomtest(agree, items).proportion_ci(level, method="wilson") if items else None
    if ci is None:
        notes.append("agreement: no REVIEW item with two labels")
    grid = {f"{h}/{d}": {"size": int(cells.size[a, b]), "labelled": int(cells.labelled[a, b]),
                         "defective": float(cells.defective[a, b])}
            for a, h in enumerate(DECISIONS) for b, d in enumerate(DECISIONS) if cells.size[a, b]}
    return Estimate(
        since, until, version, arm, int(cells.size.sum()), int(cells.labelled.sum()),
        *(getattr(found[k], f) for k in ("fnr", "fpr", "override") for f in ("value", "low", "high")),
        agree / items if items else None, ci and ci.low, ci and ci.high, items, level, grid, notes,
        review_label_error=error)


def publish(engine: sa.Engine, metrics, now: datetime | None = None) -> Estimate:
    """Set the review gauges (``metrics.review_gauges``) from the last 24 h of the line (the logged
    decisions) and the queue; run every ``review_seconds`` off the request path. None is NaN."""
    now = now or datetime.now(timezone.utc)
    with engine.connect() as connection:
        found = estimate(connection, None, now - timedelta(days=1), now)
        left = waiting(connection)
    for name, gauge in metrics.review_gauges.items():
        value = left if name == "waiting" else getattr(found, name)
        gauge.set(float("nan") if value is None else value)
    return found
