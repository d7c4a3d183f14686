"""``fabguard anomaly retrain``: the case study's CI/CD pipeline (section 4) as one command a scheduler calls.

Extract the window's images confirmed by review from the inspection log, validate them, train, evaluate the
exported ONNX artifact on held-out labelled images, register the candidate with its report and start its
shadow phase. Every input is checked before the long work (training); a failure at any step leaves the
registry as it was: no new version.

Which images. An image's labels agree (every inspector said normal, or every one said defective) or it is
*disputed* and used nowhere. The training set is the window's **PASS decisions labelled normal** (the
audit sample; the case study's "PASS images validated by human inspectors"); ``--test-fraction`` of them
is held out. REVIEW and REJECT images labelled normal are **not** trained on: inspectors agree on only 78%
of borderline images, so a normal label there is the log's least reliable one, and a defect learnt as
normal is a miss the model repeats; they are the hardest normals, so they go to the evaluation instead.
``--unreviewed`` adds the window's unlabelled PASS images to the training set (never to the evaluation):
more data, but the production model's own misses are among them, learnt as normal; off by default.

The evaluation set is every labelled image of the window not trained on: the held-out confirmed PASS
images, REVIEW and REJECT images labelled normal, and every image labelled defective. It over-represents
the borderline cases (every REVIEW is labelled, 1% of PASS), so its AUROC is for comparing models on the
same images, not the line's rate; and it was selected by the serving model's decisions, which favours
that model (reported beside the candidate as ``baseline``). The line's miss rate comes from the shadow
phase's review figures (``fabguard models compare``).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from fabguard.errors import InputError

DURATION = re.compile(r"^(\d{1,6})([dh])$")
FRESH = timedelta(minutes=1)  # unlabelled images younger than this are left out: they may still be being written
LATENCY_RUNS = 50
LISTED = 10  # problem files named in a refusal (the rest counted)
NORMAL, DEFECTIVE, DISPUTED = "normal", "defective", "disputed"


def parse_since(text: str, now: datetime) -> datetime:
    """``90d``, ``12h`` (before ``now``) or an ISO 8601 date or time (UTC when it names no zone)."""
    found = DURATION.match(text.strip())
    if found:
        amount = int(found[1])
        if amount == 0:
            raise InputError(f"--since {text!r}: the window is empty; give a positive duration (e.g. 90d, 12h)")
        return now - timedelta(**{"days" if found[2] == "d" else "hours": amount})
    try:
        since = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"--since {text!r}: give a duration (90d, 12h) or an ISO 8601 date or time "
                         "(2026-01-31, 2026-01-31T08:00:00+01:00)") from None
    since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    if since >= now:
        raise InputError(f"--since {text!r} is not in the past (now is {now.isoformat(timespec='seconds')})")
    return since


def register(subparsers) -> None:
    """Add ``retrain`` beside ``train``; its detector flags and defaults are ``train``'s."""
    from fabguard import registry
    from fabguard.anomaly.cli import _add_common, _add_detector_flags_when_parsed
    from fabguard.cli import typed
    from fabguard.params import POSITIVE_INT, Interval
    from fabguard.serve.cli import add_state_args

    train = subparsers.choices["train"]
    p = subparsers.add_parser(
        "retrain", help="train a candidate on the service's reviewed images, register it, start its shadow",
        description="The inspection service's retraining pipeline (docs/serve.md, Retraining): PASS images "
                    "labelled normal by review within --since, train, evaluate on the window's other labelled "
                    "images, register the candidate with its report and start its shadow phase.")
    add_state_args(p)
    p.add_argument("--since", default="90d", help="window start: 90d, 12h or an ISO 8601 date (default 90d, "
                                                  "the case study's 3 months)")
    p.add_argument("--model", choices=registry.available("detector"), default=train.get_default("model") or "pca",
                   help="detector (default: that of fabguard anomaly train, else pca)")
    for flag in ("--size", "--val-fraction", "--review-quantile", "--reject-quantile"):
        action = train._option_string_actions[flag]
        p.add_argument(flag, type=action.type, default=action.default, help=action.help)
    p.add_argument("--test-fraction", type=typed(float, Interval(float, 0, 1, "neither")), default=0.2,
                   help="share of the confirmed PASS images held out for the evaluation (default 0.2)")
    p.add_argument("--min-images", type=typed(int, POSITIVE_INT), default=100,
                   help="fewest training images to train on (default 100)")
    p.add_argument("--unreviewed", action="store_true",
                   help="also train on unlabelled PASS images of the window (the serving model's misses "
                        "among them are learnt as normal)")
    p.add_argument("--version", help="candidate version (default: the serving version with patch + 1, the "
                                     "next free one)")
    p.add_argument("--no-shadow", action="store_true", help="register only; start no shadow phase")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_common(p)
    _add_detector_flags_when_parsed(p)
    p.set_defaults(func=cmd_retrain)


@dataclass(frozen=True)
class Item:
    """One logged image chosen for training or evaluation."""

    id: str
    ref: str  # image path under home
    label: int  # 1 = defective
    kind: str  # "good" or the defect type


@dataclass
class Selection:
    train: list[Item]
    test: list[Item]
    sources: dict  # where the images came from: counts by decision and label, for the summary and refusals


def verdict(n_labels: int, n_defective: int) -> str:
    return NORMAL if n_defective == 0 else DEFECTIVE if n_defective == n_labels else DISPUTED


def select(connection, since: datetime, until: datetime, test_fraction: float, seed: int,
           unreviewed: bool, unreviewed_since: datetime | None) -> Selection:
    """The training and evaluation images of [since, until) (module docstring); ``unreviewed_since``: the
    oldest unlabelled image still kept by retention (None: all kept)."""
    import numpy as np
    import sqlalchemy as sa

    from fabguard.anomaly.images import NORMAL as GOOD
    from fabguard.serve import db

    i, r, q = db.inspections, db.reviews, db.review_items
    window = [i.c.created_at >= since, i.c.created_at < until]
    per = (sa.select(r.c.inspection_id, sa.func.count().label("n"),
                     sa.func.sum(sa.case((r.c.label == DEFECTIVE, 1), else_=0)).label("k"),
                     sa.func.max(r.c.defect_type).label("defect_type"))
           .group_by(r.c.inspection_id).subquery())
    rows = connection.execute(sa.select(i.c.id, i.c.decision, i.c.image_ref, per.c.n, per.c.k, per.c.defect_type)
                              .join(per, per.c.inspection_id == i.c.id).where(*window)
                              .order_by(i.c.created_at, i.c.id)).all()
    sources = {d: {"inspections": 0, "queued": 0, NORMAL: 0, DEFECTIVE: 0, DISPUTED: 0, "not_stored": 0}
               for d in ("PASS", "REVIEW", "REJECT")}
    for decision, total, queued in connection.execute(
            sa.select(i.c.decision, sa.func.count(), sa.func.count(q.c.inspection_id))
            .select_from(i.outerjoin(q, q.c.inspection_id == i.c.id)).where(*window).group_by(i.c.decision)):
        sources[decision].update(inspections=total, queued=queued)
    confirmed, test = [], []
    for row in rows:
        label = verdict(row.n, row.k)
        counts = sources[row.decision]
        counts[label] += 1
        if label == DISPUTED:
            continue
        if row.image_ref is None:
            counts["not_stored"] += 1
            continue
        item = Item(row.id, row.image_ref, int(label == DEFECTIVE),
                    GOOD if label == NORMAL else row.defect_type or "unspecified")
        (confirmed if row.decision == "PASS" and label == NORMAL else test).append(item)
    order = np.random.default_rng(seed).permutation(len(confirmed))
    held = round(test_fraction * len(confirmed))
    train = [confirmed[j] for j in sorted(order[held:])]
    test = [confirmed[j] for j in sorted(order[:held])] + test
    sources["confirmed_pass_held_out"] = held
    sources["unreviewed_pass"] = 0
    if unreviewed:
        labelled = sa.exists().where(r.c.inspection_id == i.c.id)
        where = [*window, i.c.created_at < until - FRESH, i.c.decision == "PASS", ~labelled,
                 i.c.image_ref.is_not(None)]
        if unreviewed_since is not None:
            where.append(i.c.created_at >= unreviewed_since)
        extra = connection.execute(sa.select(i.c.id, i.c.image_ref).where(*where)
                                   .order_by(i.c.created_at, i.c.id)).all()
        train += [Item(e.id, e.image_ref, 0, GOOD) for e in extra]
        sources["unreviewed_pass"] = len(extra)
    return Selection(train, test, sources)


def describe(sources: dict) -> str:
    """Where the images came from, in one sentence."""
    parts = [f"{d}: {c['inspections']} inspections, {c['queued']} queued for review, labelled {c[NORMAL]} normal / "
             f"{c[DEFECTIVE]} defective / {c[DISPUTED]} disputed" + (f", {c['not_stored']} without a stored image"
                                                                    if c["not_stored"] else "")
             for d, c in sources.items() if isinstance(c, dict)]
    return "; ".join(parts)


def next_version(versions: list[str], serving: str) -> str:
    """The serving version's name with the patch number after the highest registered one of its
    major.minor."""
    from fabguard.serve.registry import VERSION

    base = VERSION.match(serving)
    same = [VERSION.match(v) for v in versions]
    patch = 1 + max(int(m["patch"]) for m in same + [base]
                    if m and (m["name"], m["major"], m["minor"]) == (base["name"], base["major"], base["minor"]))
    if patch > 9999:
        raise InputError(f"{base['name']}-v{base['major']}.{base['minor']}.x has no patch number left; "
                         "give --version")
    return f"{base['name']}-v{base['major']}.{base['minor']}.{patch}"


def _load(items: list[Item], home: Path, size: int, progress: bool):
    """The images of ``items`` at ``size``; every damaged file is named in one refusal."""
    import numpy as np
    from tqdm.auto import tqdm

    from fabguard.anomaly.images import load_image

    images, bad = [], []
    for item in tqdm(items, desc="loading images", disable=not progress, leave=False):
        try:
            images.append(load_image(home / item.ref, size))
        except InputError as exc:
            bad.append(str(exc))
    if bad:
        raise InputError(f"{len(bad)} stored image(s) cannot be read: " + "; ".join(bad[:LISTED])
                         + (f"; and {len(bad) - LISTED} more" if len(bad) > LISTED else ""))
    return np.stack(images)


def evaluate(inspector, items: list[Item], images) -> dict:
    """The gate's metrics of an exported model on the evaluation images."""
    import numpy as np

    from fabguard.anomaly.evaluate import metrics
    from fabguard.anomaly.images import ImageSet

    result = inspector.inspect(images)
    test = ImageSet(images, [i.id for i in items], np.array([i.label for i in items]), [i.kind for i in items])
    found = metrics(test, result.scores, result.heatmaps, result.decisions)
    return {"auroc": found["image_auroc"], "auprc": found["image_auprc"], "fnr_at_fpr5": found["fnr_at_fpr5"],
            "operating_point": found["operating_point"], "detection_rate_by_type": found["detection_rate_by_type"],
            "decisions_by_type": found["decisions_by_type"]}


def latency_ms(inspector, image) -> float:
    """Median of ``LATENCY_RUNS`` single-image calls after one warm-up (as the bundled model's report)."""
    import numpy as np

    one = image[None]
    inspector.inspect(one)
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        inspector.inspect(one)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def _withdraw(registry, version: str) -> None:
    """Remove a version registered moments ago that nothing refers to (its shadow could not start)."""
    from fabguard.serve import db

    with registry.engine.begin() as c:
        c.execute(db.artifacts.delete().where(db.artifacts.c.version == version))
        c.execute(db.models.delete().where(db.models.c.version == version))
    (registry.folder / f"{version}.onnx").unlink(missing_ok=True)


def retrain(args) -> dict:
    """The pipeline; returns the summary (what ``--json`` prints)."""
    import sqlalchemy as sa

    from fabguard.anomaly.cli import _seed, make_detector
    from fabguard.anomaly.export import export_onnx
    from fabguard.anomaly.runtime import Inspector
    from fabguard.serve import db
    from fabguard.serve.config import load_settings
    from fabguard.serve.registry import Registry, check_version, gate_failures
    from fabguard.serve.retention import open_log

    now = datetime.now(timezone.utc)
    since, until = parse_since(args.since, now), now
    if args.version is not None:
        check_version(args.version)
    settings = load_settings(args.config, home=args.home, db=args.db)
    detector = make_detector(args)  # detector flags refused before any data is read
    engine = open_log(settings)
    try:
        registry = Registry(engine, settings)
        serving = registry.promoted()
        versions = [m["version"] for m in registry.list()]
        if serving is None and (args.version is None or not args.no_shadow):
            raise InputError("no version is serving (start the service once: it registers the bundled model), so "
                             "there is no version to follow and no production model to shadow")
        version = args.version or next_version(versions, serving)
        if version in versions:
            raise InputError(f"model version {version} is already registered; versions are immutable, give "
                             "another --version")
        with engine.connect() as c:
            if not args.no_shadow:
                running = c.execute(sa.select(db.experiments).where(db.experiments.c.status == "running")).first()
                if running is not None:
                    raise InputError(f"experiment {running.id} ({running.mode} of {running.candidate}) is running, "
                                     f"so no shadow phase can start: stop it (fabguard models stop {running.id}) "
                                     "or pass --no-shadow")
            kept_since = (None if settings.retain_images_days is None
                          else now - timedelta(days=settings.retain_images_days))
            chosen = select(c, since, until, args.test_fraction, args.seed, args.unreviewed, kept_since)
        window = f"{since.isoformat(timespec='seconds')} to {until.isoformat(timespec='seconds')}"
        origin = f"in the window {window}: {describe(chosen.sources)}"
        if len(chosen.train) < args.min_images:
            raise InputError(
                f"too few training images: {len(chosen.train)} (PASS images labelled normal by review, less the "
                f"{chosen.sources['confirmed_pass_held_out']} held out for evaluation"
                + (f", plus {chosen.sources['unreviewed_pass']} unlabelled PASS images" if args.unreviewed else "")
                + f"), --min-images is {args.min_images}; {origin}. Widen --since, raise audit_pass_rate, "
                "or add unlabelled PASS images with --unreviewed")
        n_defective = sum(i.label for i in chosen.test)
        if n_defective == 0 or n_defective == len(chosen.test):
            raise InputError(f"the evaluation needs held-out normal and defective labelled images; it has "
                             f"{len(chosen.test) - n_defective} normal and {n_defective} defective, {origin}")
        missing = [i.ref for i in chosen.train + chosen.test if not (settings.home / i.ref).is_file()]
        if missing:
            raise InputError(f"{len(missing)} image file(s) of the log are missing under {settings.home}: "
                             + ", ".join(missing[:LISTED]) + (f" and {len(missing) - LISTED} more"
                                                              if len(missing) > LISTED else ""))
        detector.check_memory(len(chosen.train))
        progress = not args.quiet
        _seed(args)
        train = _load(chosen.train, settings.home, detector.input_size, progress)
        test = _load(chosen.test, settings.home, detector.input_size, progress)
        detector.fit(train, progress=progress)
        with tempfile.TemporaryDirectory(prefix="fabguard-retrain-") as tmp:
            artifact = export_onnx(detector, Path(tmp) / f"{version}.onnx", seed=args.seed)
            inspector = Inspector(artifact, providers=["CPUExecutionProvider"], threads=settings.threads)
            found = evaluate(inspector, chosen.test, test)
            report = {
                "version": version, "model": detector.kind, "params": detector.get_params(),
                "input_size": detector.input_size, "seed": args.seed,
                "auroc": found["auroc"], "auprc": found["auprc"], "fnr_at_fpr5": found["fnr_at_fpr5"],
                "latency_ms_p50": latency_ms(inspector, test[0]),
                "latency_note": f"ONNX Runtime CPU, batch 1, median of {LATENCY_RUNS} (machine that retrained)",
                **{k: found[k] for k in ("operating_point", "detection_rate_by_type", "decisions_by_type")},
                "thresholds": detector.thresholds_.as_dict(), "train_fingerprint": detector.fingerprint_,
                "data": {"since": since.isoformat(), "until": until.isoformat(), "train": len(chosen.train),
                         "test_normal": len(chosen.test) - n_defective, "test_defective": n_defective,
                         "sources": chosen.sources,
                         "test_note": "labelled images of the window not trained on; REVIEW and REJECT decisions "
                                      "are over-represented, so compare models on it, and read the line's miss "
                                      "rate from the shadow phase's review figures"},
                "made_by": "fabguard anomaly retrain",
            }
            if serving is not None:
                base = registry.load(serving).inspector
                report["baseline"] = {"version": serving, **{k: v for k, v in evaluate(
                    base, chosen.test, _load(chosen.test, settings.home, base.input_size, False)).items()
                    if k in ("auroc", "auprc", "fnr_at_fpr5")},
                    "note": "the serving model on the same images; they were selected by its decisions, which "
                            "favours it"}
            report["gate_failures"] = gate_failures(report, settings)
            registry.register(artifact, version, report)
        experiment = None
        if not args.no_shadow:
            from fabguard.serve.experiments import Experiments
            from fabguard.serve.metrics import Metrics

            try:
                experiment = Experiments(engine, registry, settings, Metrics(settings.max_batch)).start(
                    version, "shadow")["id"]
            except InputError as exc:
                _withdraw(registry, version)
                raise InputError(f"the shadow phase of {version} could not start ({exc}); the version was "
                                 "withdrawn, nothing changed") from None
            except KeyboardInterrupt:
                _withdraw(registry, version)
                raise
    finally:
        engine.dispose()
    return {"version": version, "baseline": serving, "experiment": experiment, "report": report,
            "sources": origin}


def cmd_retrain(args) -> int:
    summary = retrain(args)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    r, data = summary["report"], summary["report"]["data"]
    print(f"registered {summary['version']} ({r['model']}): trained on {data['train']} images, evaluated on "
          f"{data['test_normal']} normal + {data['test_defective']} defective held-out labelled images")
    print(f"  AUROC {r['auroc']:.4f}  AUPRC {r['auprc']:.4f}  FNR@FPR5% {r['fnr_at_fpr5']:.4f}  "
          f"latency p50 {r['latency_ms_p50']:.2f} ms")
    if "baseline" in r:
        b = r["baseline"]
        print(f"  serving {b['version']} on the same images: AUROC {b['auroc']:.4f}  AUPRC {b['auprc']:.4f}  "
              f"FNR@FPR5% {b['fnr_at_fpr5']:.4f}")
    print("  validation gate: " + ("passes" if not r["gate_failures"] else "fails (promotion will be refused): "
                                   + "; ".join(r["gate_failures"])))
    print(f"  shadow phase: experiment {summary['experiment']} beside {summary['baseline']}"
          if summary["experiment"] is not None else "  no shadow phase started (--no-shadow)")
    return 0
