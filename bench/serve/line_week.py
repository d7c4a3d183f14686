"""A simulated week on the line (issue 10's acceptance): images replayed through a running ``fabguard serve``.

    python bench/serve/line_week.py                      # 7 days x 1200 synthetic wafer images, seed 0
    python bench/serve/line_week.py --per-day 300        # a quick run

Images are 2% defective. The service runs as its own process on loopback (SQLite log), with audit sampling (PASS 5%, REJECT 20%),
20% of REVIEW items labelled twice, the guardrail every second and the drift monitor every 2 s. Inspectors
answer the review queue from the ground truth. On REVIEW items (the ambiguous band, where the case study
measures its 78% inspector agreement) each flips the truth with probability 0.124, so two of them agree 78%
of the time ((1 - q)^2 + q^2 = 0.78). Audited PASS and REJECT images are labelled correctly (``--audit-flip``
sets an error rate): at 2% defects, every 0.1% of false "defective" labels on audited PASS images adds about
five points to the estimated miss rate (0.98 x 0.001 / 0.02), so audit labels must be confirmed (a second
inspector, or the wafer itself) for a 0.1%-level FNR to be measurable at all. The week:

- day 1: production alone: ``pca-wafer-v1.1.0`` (the bundled model when these results were recorded, fitted
  again by :mod:`bench.serve.pca_wafer`), registered and promoted over the bundled default;
- day 2: a good candidate (PCA, 24 components) in shadow; its comparison report at the end of the day;
- day 3: the same candidate as a 10% canary; report (two-proportion tests, p < 0.01) at the end of the day,
  promoted if the report recommends it, else stopped;
- day 4: from the middle of the day on, the images are brighter (+0.004, a shift too small to change
  decisions): the drift monitor must alert;
- day 5: brightness back to normal; a deliberately bad candidate (PCA fitted on defective images as well,
  so it reconstructs defects and passes them) in shadow: the guardrail must roll it back;
- days 6-7: production alone.

Then MVTec transistor (``--transistor``, default ../shared/data/mvtec_ad_256/transistor): PatchCore (1%
coreset, seed) fitted on ``train/good``, served by a second service instance with PASS audited at 20% and
REJECT at 50% (40 defective test images are few: a larger audit share keeps the interval informative); the
100 test images are replayed ``--replays`` times as different wafers, reviewed as above, and the review
estimates of FNR / FPR are set beside the truth.

Reports when each alert fired (drift alarm from ``/api/v1/drift``; REJECT rate per hour over 5%; guardrail
and experiment events), the canary test's p-values and verdict, the guardrail rollback and how long it
took, and the FNR / FPR estimates from reviews beside the truth. Writes bench/results/serve/line_week.md
and .json. Day boundaries are image counts (the run takes minutes, not a week), so "per hour" figures are
per simulated day here.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results" / "serve"
TOKEN = "line-week-token"
FLIP = 0.124  # per-inspector label flip on REVIEW items: (1 - q)^2 + q^2 = 0.78 agreement
SIZE = 64  # the size production was trained at: other sizes change the noise, which is drift
POINTS = 5  # images per wafer
GOOD, BAD = "pca-wafer-v1.2.0", "pca-wafer-v1.3.0"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(gray: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.round(np.clip(gray, 0, 1) * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def make_candidates(work: Path, seed: int) -> dict:
    """The good and the bad candidate, exported, with their evaluation reports on fresh synthetic images."""
    from fabguard.anomaly.evaluate import metrics
    from fabguard.anomaly.export import export_onnx
    from fabguard.anomaly.pca import PCADetector
    from fabguard.anomaly.runtime import Inspector
    from fabguard.anomaly.synthetic import synthetic_set
    from fabguard.serve.bundle import as_8bit

    test = synthetic_set(200, 200, 64, seed=seed + 101)
    test.images = as_8bit(test.images)
    normal = as_8bit(synthetic_set(1000, 0, 64, seed=seed + 102).images)
    mixed = as_8bit(synthetic_set(200, 200, 64, seed=seed + 103).images)
    out = {}
    for version, images, components in ((GOOD, normal, 24), (BAD, np.concatenate([normal, mixed]), 48)):
        detector = PCADetector(n_components=components, input_size=64, seed=seed).fit(images)
        artifact = export_onnx(detector, work / f"{version}.onnx", seed=seed)
        inspector = Inspector(artifact, providers=["CPUExecutionProvider"], threads=1)
        found = metrics(test, *(lambda r: (r.scores, r.heatmaps, r.decisions))(inspector.inspect(test.images)))
        out[version] = (artifact, {"auroc": found["image_auroc"], "auprc": found["image_auprc"],
                                   "fnr_at_fpr5": found["fnr_at_fpr5"], "latency_ms_p50": 0.3,
                                   "test_fnr_at_thresholds": float(np.mean(
                                       inspector.inspect(test.images[test.labels == 1]).decisions == "PASS"))})
    return out


class Stream:
    """Synthetic wafer images, 2% defective, seeded; ``brightness`` shifts every pixel."""

    def __init__(self, seed: int, defect_rate: float = 0.02):
        self.rng, self.defect_rate, self.brightness = np.random.default_rng(seed), defect_rate, 0.0

    def next(self) -> tuple[bytes, int, str]:
        from fabguard.anomaly.synthetic import DEFECT_TYPES, add_defect, normal_image

        image = normal_image(SIZE, self.rng)
        kind = "normal"
        if self.rng.random() < self.defect_rate:
            kind = DEFECT_TYPES[int(self.rng.integers(len(DEFECT_TYPES)))]
            image, _ = add_defect(image, kind, self.rng)
        return png(image + self.brightness), int(kind != "normal"), kind


class Server:
    def __init__(self, home: Path, env: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "fabguard", "serve", "--port", str(self.port),
                                      "--home", str(home)], env={**os.environ, **env},
                                     stdout=subprocess.DEVNULL, stderr=open(home.parent / "server.log", "w"))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("service did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class Line:
    """The client side of the week: inspection stations, inspectors, and the engineer reading reports."""

    def __init__(self, api, args):
        self.api, self.args = api, args
        self.rng = np.random.default_rng(args.seed + 7)
        self.truth: dict[str, tuple[int, str]] = {}  # inspection id -> (defective, kind)
        self.answers: list[dict] = []
        self.count = 0
        self.timeline: list[dict] = []

    def note(self, what: str, **detail) -> None:
        entry = {"image": self.count, "day": self.count / self.args.per_day + 1, "at": time.time(), "what": what,
                 **detail}
        self.timeline.append(entry)
        print(f"[image {self.count:6d}, day {entry['day']:.2f}] {what} {json.dumps(detail, default=str)[:200]}",
              flush=True)

    async def inspect(self, stream: Stream, n: int, concurrency: int = 8) -> None:
        items = [stream.next() for _ in range(n)]
        base = self.count
        async with httpx.AsyncClient(base_url=self.api.http.base_url, timeout=60) as http:
            async def one(k: int):
                body, defective, kind = items[k]
                index = base + k
                r = await http.post("/api/v1/inspect", content=body,
                                    params={"wafer_id": f"WF-{index // POINTS:06d}", "inspection_point": index % POINTS})
                r.raise_for_status()
                answer = r.json()
                self.truth[answer["inspection_id"]] = (defective, kind)
                self.answers.append({**{k2: answer[k2] for k2 in ("inspection_id", "decision", "model_version",
                                                                    "anomaly_score")},
                                     "index": index, "defective": defective})

            for start in range(0, n, concurrency):
                await asyncio.gather(*(one(k) for k in range(start, min(n, start + concurrency))))
        self.count += n

    def review(self) -> int:
        """Both inspectors answer everything waiting for them; returns labels given."""
        given = 0
        for inspector in ("inspector-a", "inspector-b"):
            while True:
                items = self.api.review_queue(inspector, limit=100)["items"]
                items = [i for i in items if i["inspection_id"] in self.truth]
                if not items:
                    break
                for item in items:
                    defective, kind = self.truth[item["inspection_id"]]
                    flip = FLIP if item["reason"] == "review" else self.args.audit_flip
                    said = defective if self.rng.random() >= flip else 1 - defective
                    self.api.label(item["inspection_id"], inspector, ("normal", "defective")[said],
                                   (kind if kind != "normal" else "other") if said else None)
                    given += 1
        return given


def stop_if_running(api, experiment_id: int, line: Line) -> None:
    """Stop the experiment unless it has ended (the guardrail may end it between the look and the stop:
    the service then answers 409, and the note says how it ended)."""
    from fabguard.client import ServiceError

    status = api.experiment(experiment_id)["status"]
    if status == "running":
        try:
            api.stop_experiment(experiment_id)
            line.note(f"experiment {experiment_id} stopped")
            return
        except ServiceError as exc:
            if exc.status != 409:
                raise
            status = api.experiment(experiment_id)["status"]
    line.note(f"experiment {experiment_id} had already ended: {status}")


def truth_rates(answers: list[dict], versions=None) -> dict:
    rows = [a for a in answers if versions is None or a["model_version"] in versions]
    d = np.array([a["defective"] for a in rows], bool)
    passed = np.array([a["decision"] == "PASS" for a in rows], bool)
    rejected = np.array([a["decision"] == "REJECT" for a in rows], bool)
    return {"n": len(rows), "defective": int(d.sum()),
            "fnr": float(np.mean(passed[d])) if d.any() else None,
            "fpr": float(np.mean(rejected[~d])) if (~d).any() else None}


async def week(line: Line, args) -> dict:
    api, per_day, chunk = line.api, args.per_day, args.chunk
    stream = Stream(args.seed)
    found: dict = {"drift": [], "reject_rate": [], "experiments": {}}
    drift_start = None

    async def run(n: int, label: str) -> None:
        nonlocal drift_start
        done = 0
        while done < n:
            step = min(chunk, n - done)
            await line.inspect(stream, step)
            done += step
            line.review()
            report = api.drift()
            found["drift"].append({"image": line.count, "alarm": report["alarm"],
                                   "score_p": report["score"].get("pvalue"),
                                   "latent_p": report["latent"].get("pvalue") if isinstance(report["latent"], dict)
                                   else None, "phase": label})
            if report["alarm"] and (not found["drift"][:-1] or not found["drift"][-2]["alarm"]):
                line.note("drift alarm", score_p=report["score"].get("pvalue"),
                          latent_p=report["latent"].get("pvalue"), phase=label)
            recent = line.answers[-step:]
            rate = float(np.mean([a["decision"] == "REJECT" for a in recent]))
            if rate > 0.05:
                found["reject_rate"].append({"image": line.count, "rate": rate})

    line.note("day 1: production alone")
    await run(per_day, "day 1")
    good = api.start_experiment(GOOD, "shadow")
    line.note("day 2: shadow of the good candidate", experiment=good["id"])
    await run(per_day, "day 2 shadow")
    found["experiments"]["shadow"] = api.compare(good["id"])
    stop_if_running(api, good["id"], line)
    canary = api.start_experiment(GOOD, "canary", 0.1)
    line.note("day 3: 10% canary of the good candidate", experiment=canary["id"])
    await run(per_day, "day 3 canary")
    report = found["experiments"]["canary"] = api.compare(canary["id"])
    line.note("canary report", tests=report["tests"], recommend=report["recommend_promotion"],
              reasons=report["reasons"])
    if report["recommend_promotion"]:
        api.promote(GOOD)
        line.note("promoted the good candidate")
    else:
        stop_if_running(api, canary["id"], line)
    line.note("day 4: normal first half")
    await run(per_day // 2, "day 4")
    stream.brightness = args.brightness
    drift_start = line.count
    line.note("drift injected", brightness=args.brightness)
    await run(per_day - per_day // 2, "day 4 drift")
    stream.brightness = 0.0
    line.note("drift removed")
    bad = api.start_experiment(BAD, "shadow")
    bad_started, bad_from = time.time(), line.count
    line.note("day 5: shadow of the bad candidate", experiment=bad["id"])
    rolled = None
    for _ in range(per_day // chunk):
        await run(chunk, "day 5 bad shadow")
        if api.experiment(bad["id"])["status"] == "rolled_back" and rolled is None:
            rolled = {"images": line.count - bad_from, "seconds": time.time() - bad_started}
            line.note("guardrail rolled the bad candidate back", **rolled)
    if rolled is None:
        line.note("the guardrail did not fire on day 5")
    found["experiments"]["bad_shadow"] = api.compare(bad["id"])
    found["guardrail"] = {"fired": rolled is not None, "images_after_start": (rolled or {}).get("images"),
                          "seconds_after_start": (rolled or {}).get("seconds"),
                          "events": api.events(kind="guardrail")}
    stop_if_running(api, bad["id"], line)
    line.note("days 6-7: production")
    await run(2 * per_day, "days 6-7")
    found["drift_start_image"] = drift_start
    alarms_after = [d for d in found["drift"] if d["alarm"] and d["image"] > drift_start]
    found["drift_alert_after_images"] = (alarms_after[0]["image"] - drift_start) if alarms_after else None
    found["drift_false_alarm_checks"] = {"before": sum(d["alarm"] for d in found["drift"] if d["image"] <= drift_start),
                                         "checks_before": sum(d["image"] <= drift_start for d in found["drift"])}
    return found


async def transistor(args, work: Path) -> dict:
    """The transistor line: one model, real images, estimates vs truth."""
    from fabguard.anomaly.export import export_onnx
    from fabguard.anomaly.images import dataset_entries, load_dataset
    from fabguard.anomaly.patchcore import PatchCoreDetector
    from fabguard.client import Client

    root = Path(args.transistor)
    # the settings its recorded results were measured with (before the projection became the default)
    detector = PatchCoreDetector(coreset_ratio=0.01, coreset_projection=None, seed=args.seed)
    detector.fit(load_dataset(root, 256, "train").images)
    artifact = export_onnx(detector, work / "patchcore-transistor.onnx", seed=args.seed)
    entries = dataset_entries(root, "test")
    env = {"FABGUARD_TOKEN": TOKEN, "FABGUARD_AUDIT_PASS_RATE": "0.2", "FABGUARD_AUDIT_REJECT_RATE": "0.5",
           "FABGUARD_SECOND_LABEL_RATE": "0.2", "FABGUARD_REVIEW_SEED": str(args.seed), "OMP_WAIT_POLICY": "PASSIVE",
           "FABGUARD_REVIEW_DEFECT_TYPES": json.dumps(sorted({kind for _, kind, _ in entries if kind != "good"})
                                                      + ["other"])}
    (work / "transistor").mkdir()
    server = Server(work / "transistor" / "home", env)
    try:
        with Client(server.url, token=TOKEN, timeout=120) as api:
            version = "patchcore-transistor-v1.0.0"
            api.register(artifact, version, {"auroc": 0.0, "auprc": 0.0, "fnr_at_fpr5": 1.0, "latency_ms_p50": 1.0,
                                             "note": "bench model: promoted with --force, figures not measured"})
            api.promote(version, force=True)
            line = Line(api, args)
            started = datetime.now(timezone.utc).isoformat()
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
                for replay in range(args.replays):
                    for k, (path, kind, _mask) in enumerate(entries):
                        r = await http.post("/api/v1/inspect", content=Path(path).read_bytes(),
                                            params={"wafer_id": f"TR-{replay}-{k:03d}", "inspection_point": 0})
                        r.raise_for_status()
                        a = r.json()
                        defective = int(kind != "good")
                        line.truth[a["inspection_id"]] = (defective, kind if defective else "normal")
                        line.answers.append({"inspection_id": a["inspection_id"], "decision": a["decision"],
                                             "model_version": a["model_version"], "anomaly_score": a["anomaly_score"],
                                             "index": line.count, "defective": defective})
                        line.count += 1
                    line.review()
            line.review()
            return {"version": version, "images": line.count, "replays": args.replays,
                    "estimated": api.review_figures(since=started, version=version),
                    "truth": truth_rates(line.answers)}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-day", type=int, default=1200, help="images per simulated day")
    parser.add_argument("--chunk", type=int, default=100, help="images between review rounds and drift checks")
    parser.add_argument("--brightness", type=float, default=0.004)
    parser.add_argument("--audit-flip", type=float, default=0.0,
                        help="per-inspector label error on audited PASS / REJECT images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transistor", default=str(ROOT.parent / "shared/data/mvtec_ad_256/transistor"),
                        help="MVTec transistor folder ('' to skip)")
    parser.add_argument("--replays", type=int, default=5, help="times the transistor test set is replayed")
    args = parser.parse_args()
    from fabguard.client import Client

    from bench.serve.pca_wafer import VERSION as PCA_VERSION
    from bench.serve.pca_wafer import pca_wafer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        candidates = make_candidates(work, args.seed)
        env = {"FABGUARD_TOKEN": TOKEN, "FABGUARD_AUDIT_PASS_RATE": "0.05", "FABGUARD_AUDIT_REJECT_RATE": "0.2",
               "FABGUARD_SECOND_LABEL_RATE": "0.2", "FABGUARD_GUARDRAIL_SECONDS": "1",
               "FABGUARD_MONITOR_SECONDS": "2", "FABGUARD_DRIFT_WINDOW": "300", "FABGUARD_DRIFT_MIN_WINDOW": "100",
               "FABGUARD_REVIEW_SECONDS": "5", "FABGUARD_SYNC_SECONDS": "0.5", "FABGUARD_REVIEW_SEED": str(args.seed),
               "OMP_WAIT_POLICY": "PASSIVE"}
        server = Server(work / "home", env)
        started = time.time()
        try:
            with Client(server.url, token=TOKEN, timeout=60) as api:
                artifact, report = pca_wafer(work)
                api.register(artifact, PCA_VERSION, report)
                api.promote(PCA_VERSION)
                for version, (artifact, report) in candidates.items():
                    api.register(artifact, version, report)
                line = Line(api, args)
                found = asyncio.run(week(line, args))
                line.review()
                first = datetime.fromtimestamp(started - 60, timezone.utc).isoformat()
                estimated = {"week": api.review_figures(since=first)}
                for version in sorted({a["model_version"] for a in line.answers}):
                    estimated[version] = api.review_figures(since=first, version=version)
                truth = {"week": truth_rates(line.answers),
                         **{v: truth_rates(line.answers, {v}) for v in estimated if v != "week"}}
                events = api.events(limit=1000)
        finally:
            server.stop()
        found["transistor"] = asyncio.run(transistor(args, work)) if args.transistor else None
    results = {"args": vars(args), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "candidates": {v: r for v, (_, r) in candidates.items()}, "timeline": line.timeline,
               "found": found, "estimated": estimated, "truth": truth, "events": events,
               "seconds": time.time() - started, "images": line.count}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "line_week.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    write_md(results)


def write_md(r: dict) -> None:
    f = r["found"]
    lines = [f"# A simulated week on the line ({r['machine']})", "",
             f"Command: `python bench/serve/line_week.py --per-day {r['args']['per_day']} --seed {r['args']['seed']}`; "
             f"{r['images']} synthetic wafer images through a live `fabguard serve` in {r['seconds']:.0f} s. "
             "Inspectors answer the review queue from the truth with 22% two-inspector disagreement.", "",
             "## Timeline", "", "| image | day | what | detail |", "|---|---|---|---|"]
    for t in r["timeline"]:
        detail = {k: v for k, v in t.items() if k not in ("image", "day", "at", "what")}
        lines.append(f"| {t['image']} | {t['day']:.2f} | {t['what']} | {json.dumps(detail, default=str)[:160]} |")
    lines += ["", "## Alerts", "",
              f"- Drift injected at image {f['drift_start_image']}; first drift alarm "
              f"{f['drift_alert_after_images']} images later (checked every {r['args']['chunk']} images). "
              f"Alarms before the injection: {f['drift_false_alarm_checks']['before']} of "
              f"{f['drift_false_alarm_checks']['checks_before']} checks.",
              f"- REJECT rate over 5% in a {r['args']['chunk']}-image block: "
              f"{len(f['reject_rate'])} blocks (images {[x['image'] for x in f['reject_rate']][:10]}).",
              f"- Guardrail: fired {f['guardrail']['fired']}, {f['guardrail']['images_after_start']} images and "
              f"{(f['guardrail']['seconds_after_start'] or 0):.1f} s after the bad candidate's shadow began."]
    for name in ("shadow", "canary", "bad_shadow"):
        e = f["experiments"][name]
        lines += ["", f"## {name}: {e['candidate']['version']} vs {e['production']['version']}", "",
                  "| | candidate | production | p (two-proportion) | verdict |", "|---|---|---|---|---|"]
        for d in ("reject", "review"):
            p = e["tests"][d]["p_value"]
            lines.append(f"| {d.upper()} rate | {e['candidate'][f'{d}_rate']} | {e['production'][f'{d}_rate']} | "
                         f"{'-' if p is None else f'{p:.3g}'} | {e['tests'][d]['verdict']} |")
        lab = e["labelled"][e["candidate"]["version"]]
        lines += ["", f"n = {e['candidate']['n']} / {e['production']['n']}; agreement {e['agreement']}; "
                  f"score KS {e['score_ks']}; candidate FNR {lab['fnr']} [{lab['fnr_low']}, {lab['fnr_high']}], "
                  f"FPR {lab['fpr']}; recommend promotion: {e['recommend_promotion']} ({'; '.join(e['reasons'])}); "
                  f"caveats: {'; '.join(e['caveats']) or '-'}"]
    lines += ["", "## FNR / FPR: estimated from reviews vs truth", "",
              "| scope | images | FNR est. [95%] | FNR true | FPR est. [95%] | FPR true | agreement |",
              "|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for scope, est in r["estimated"].items():
        t = r["truth"][scope]
        lines.append(f"| {scope} | {t['n']} | {fmt(est['fnr'])} [{fmt(est['fnr_low'])}, {fmt(est['fnr_high'])}] | "
                     f"{fmt(t['fnr'])} | {fmt(est['fpr'])} [{fmt(est['fpr_low'])}, {fmt(est['fpr_high'])}] | "
                     f"{fmt(t['fpr'])} | {fmt(est.get('agreement'))} |")
    tr = f.get("transistor")
    if tr:
        est, t = tr["estimated"], tr["truth"]
        lines += ["", f"## MVTec transistor: {tr['version']}, {tr['images']} inspections ({tr['replays']} replays of "
                  "the 100 test images), PASS audited at 20%, REJECT at 50%", "",
                  "| | FNR [95%] | FPR [95%] |", "|---|---|---|",
                  f"| estimated from reviews | {fmt(est['fnr'])} [{fmt(est['fnr_low'])}, {fmt(est['fnr_high'])}] | "
                  f"{fmt(est['fpr'])} [{fmt(est['fpr_low'])}, {fmt(est['fpr_high'])}] |",
                  f"| truth | {fmt(t['fnr'])} | {fmt(t['fpr'])} |", "",
                  f"Labelled {est['labelled']} of {est['inspections']}; REVIEW label error used "
                  f"{est.get('review_label_error')}; notes: {'; '.join(est['notes']) or '-'}"]
    (OUT / "line_week.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
