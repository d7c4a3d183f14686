"""Reliability and speed of ``fabguard serve`` on loopback, each server a separate process:

    python bench/serve/bench_serve.py                 # the issue's setting: 50 clients x 60 s per mode
    python bench/serve/bench_serve.py --seconds 10 --clients 20   # a quick run

1. load: ``--clients`` concurrent clients for ``--seconds`` with dynamic batching (max batch 16, max wait
   2 ms) and without (max batch 1), the bundled model serving and then PatchCore (1% coreset), whose
   per-image time falls more with the batch size: requests, errors, throughput, p50 / p99; in each run a
   second model is promoted at 1/3 and rolled back at 2/3 of the time (failed requests and rollback time
   counted);
2. kill -9 during load, restart: every inspection answered 200 is in the log; SQLite integrity check;
3. PostgreSQL stopped during load (when its server binaries are installed): how inspections fail
   (status, time to answer) and when the service answers 200 again by itself;
4. latency at concurrency 1, the case study's budget table: per-stage times measured in process
   (decode, resize, ONNX Runtime, score + decision, heatmap planes after the answer, heatmap PNG drawn on
   GET, JSON serialisation, log commit) and HTTP end-to-end, ``--latency-runs`` runs per model and client
   (medians shown); HTTP p99 against inference p99; the HTTP floor of this machine (``floor_app.py``: the
   same stack doing no work of its own), bare and, run by run in turns with the service, around a native
   call as long as the model's; the CPU steal of this virtual machine during each run.

Images: synthetic 256 x 256 wafers (seeded). Models: the bundled default; for the latency table and
the second load run, models fitted on 100 synthetic wafers (seed 5). Writes bench/results/serve/serve.md
and serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results" / "serve"
TOKEN = "bench-token"
REPORT = {"auroc": 0.0, "auprc": 0.0, "fnr_at_fpr5": 1.0, "latency_ms_p50": 1.0}  # promoted with force: latency only
SWITCH = "serving-copy-v1.0.0"  # the serving artifact again, promoted and rolled back under load


def images(n: int = 16) -> list[bytes]:
    from fabguard.anomaly.synthetic import synthetic_set

    out = []
    for im in synthetic_set(n // 2, n - n // 2, 256, seed=7).images:
        buffer = io.BytesIO()
        Image.fromarray(np.round(im[0] * 255).astype(np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, home: Path, env: dict | None = None, db: str | None = None):
        self.home, self.port, self.db = home, free_port(), db
        self.env = {**os.environ, "FABGUARD_TOKEN": TOKEN, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "fabguard", "serve", "--port", str(self.port), "--home", str(self.home)] + \
            (["--db", self.db] if self.db else [])

    def start(self) -> "Server":
        self.proc = subprocess.Popen(self.command(), env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("server exited at start")
            time.sleep(0.2)
        raise RuntimeError("server not ready in 180 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


class Floor(Server):
    """``floor_app.py``: the same HTTP stack with no work of the service's own (the latency floor), and
    with ``call_ms`` a native call of that length in place of the model's."""

    def __init__(self, home: Path, call_ms: float = 0.0):
        super().__init__(home)
        self.call_ms = call_ms

    def command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).with_name("floor_app.py")), str(self.port), str(self.call_ms)]


def load(url: str, clients: int, seconds: float, bodies: list[bytes], events=()) -> dict:
    """``clients`` threads posting images for ``seconds``, each over a keep-alive connection of its own;
    ``events``: (at seconds, name, function), each run on a thread of its own at that time. The standard
    library's client: httpx's asyncio client with 50 connections took more of the two shared cores than
    the service did, so its throughput was the client's (about 80 requests/s, p99 near 3 s), and it
    turned dynamic batching's gain into a loss."""
    host, port = url.removeprefix("http://").split(":")
    latencies, statuses, ids, versions, event_log = [], [], [], [], {}
    end = time.perf_counter() + seconds

    def client(i: int):
        connection, n = None, 0
        while time.perf_counter() < end:
            start = time.perf_counter()
            try:
                connection = connection or http.client.HTTPConnection(host, int(port), timeout=30)
                connection.request("POST", f"/api/v1/inspect?wafer_id=WF-{i}&inspection_point={n}",
                                   body=bodies[(i + n) % len(bodies)],
                                   headers={"Content-Type": "application/octet-stream"})
                response = connection.getresponse()
                answer = response.read()
                statuses.append(response.status)
                if response.status == 200:
                    answer = json.loads(answer)
                    ids.append(answer["inspection_id"])
                    versions.append(answer["model_version"])
            except Exception as exc:  # noqa: BLE001  (the server killed or restarting; a damaged answer)
                statuses.append(type(exc).__name__)
                if connection is not None:
                    connection.close()
                connection = None
                time.sleep(0.01)
            latencies.append(time.perf_counter() - start)
            n += 1
        if connection is not None:
            connection.close()

    def run_event(at, name, action):
        time.sleep(at)
        try:
            event_log[name] = action()
        except Exception as exc:  # noqa: BLE001  (reported, and the run fails after the clients stop)
            event_log[name] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads += [threading.Thread(target=run_event, args=event) for event in events]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    failed = {name: exc for name, exc in event_log.items() if isinstance(exc, Exception)}
    if failed:
        raise RuntimeError(f"event(s) failed during the load: {failed}")
    lat = np.array(latencies) * 1e3
    ok = sum(1 for s in statuses if s == 200)
    return {"requests": len(statuses), "ok": ok, "errors": len(statuses) - ok,
            "error_kinds": sorted({str(s) for s in statuses if s != 200}), "seconds": wall,
            "throughput_per_s": ok / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "ids": ids, "versions": sorted(set(versions)),
            "events": event_log}


def phase_load(args, bodies, work: Path, version: str | None = None, serving: Path | None = None) -> dict:
    """Both modes with the bundled model serving, or ``serving`` (registered as ``version``). The serving
    artifact registered again, as ``SWITCH``, is promoted at 1/3 and rolled back at 2/3 of each run: the
    switch under load, with each answer naming its version, and no faster or slower model in the
    throughput."""
    from fabguard.client import Client
    from fabguard.serve.bundle import FOLDER, VERSION

    artifact = serving or FOLDER / f"{VERSION}.onnx"
    results = {}
    for mode, env in (("batching", {"FABGUARD_MAX_BATCH": "16", "FABGUARD_MAX_WAIT_MS": "2"}),
                      ("no batching", {"FABGUARD_MAX_BATCH": "1", "FABGUARD_MAX_WAIT_MS": "0"})):
        server = Server(work / f"{version or 'bundled'}-{mode.replace(' ', '_')}", env).start()
        try:
            # the same promote and rollback in both modes, so their throughputs compare like for like
            admin = Client(server.url, token=TOKEN, timeout=120)
            if serving is not None:
                admin.register(serving, version, REPORT)
                admin.promote(version, force=True)
            admin.register(artifact, SWITCH, REPORT)

            def promote():
                start = time.perf_counter()
                admin.promote(SWITCH, True)
                return time.perf_counter() - start

            def rollback():
                start = time.perf_counter()
                admin.rollback()
                return time.perf_counter() - start
            events = ((args.seconds / 3, "promote_s", promote), (2 * args.seconds / 3, "rollback_s", rollback))
            result = load(server.url, args.clients, args.seconds, bodies, events)
            metrics = httpx.get(server.url + "/metrics").text
            sizes = [line for line in metrics.splitlines() if line.startswith("fabguard_batch_size_")]
            result["batch_size_mean"] = (float(next(s.split()[-1] for s in sizes if s.startswith("fabguard_batch_size_sum")))
                                         / float(next(s.split()[-1] for s in sizes if s.startswith("fabguard_batch_size_count"))))
            result.pop("ids")
            results[mode] = result
        finally:
            server.stop()
    return results


def phase_kill(args, bodies, work: Path) -> dict:
    home = work / "kill"
    server = Server(home).start()

    def killer():
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        return True

    result = load(server.url, args.clients, args.kill_after + 2, bodies, ((args.kill_after, "kill", killer),))
    with sqlite3.connect(home / "fabguard.db") as c:
        integrity = c.execute("PRAGMA integrity_check").fetchone()[0]
        logged = {r[0] for r in c.execute("SELECT id FROM inspections")}
    missing = len(set(result["ids"]) - logged)
    restarted = Server(home, db=None)
    restarted.port, restarted.url = server.port, server.url
    start = time.perf_counter()
    restarted.start()
    restart_s = time.perf_counter() - start
    after = httpx.post(server.url + "/api/v1/inspect", params={"wafer_id": "WF-after", "inspection_point": 0},
                       content=bodies[0], timeout=30).status_code
    restarted.stop()
    return {"answered_200": len(result["ids"]), "logged": len(logged), "answered_but_missing": missing,
            "integrity_check": integrity, "restart_to_ready_s": restart_s, "status_after_restart": after}


def phase_outage(args, bodies, work: Path) -> dict | None:
    from tests.serve.pg import Cluster, binaries

    if binaries() is None:
        return None
    cluster = Cluster(free_port()).init()
    try:
        server = Server(work / "pg", db=cluster.url).start()
        timeline = []

        async def run():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                async def one(i, n):
                    start = time.perf_counter()
                    r = await http.post("/api/v1/inspect", params={"wafer_id": f"WF-{i}", "inspection_point": n},
                                        content=bodies[n % len(bodies)])
                    timeline.append((start, r.status_code, time.perf_counter() - start))

                async def client(i):
                    n = 0
                    while time.perf_counter() < end:
                        await one(i, n)
                        n += 1

                async def outage():
                    await asyncio.sleep(args.outage_at)
                    await asyncio.to_thread(cluster.stop)
                    marks["stop"] = time.perf_counter()  # pg_ctl -w returned: the server is down
                    await asyncio.sleep(args.outage_for)
                    marks["restart"] = time.perf_counter()
                    await asyncio.to_thread(cluster.start)
                    marks["start"] = time.perf_counter()

                await asyncio.gather(*(client(i) for i in range(args.outage_clients)), outage())
        marks = {}
        end = time.perf_counter() + args.outage_at + args.outage_for + 8
        asyncio.run(run())
        server.stop()
    finally:
        cluster.remove()
    during = [(s, c, d) for s, c, d in timeline if marks["stop"] < s < marks["restart"]]
    after_ok = [s for s, c, _ in timeline if s > marks["start"] and c == 200]
    return {"clients": args.outage_clients, "outage_s": args.outage_for,
            "statuses_during": {str(k): sum(1 for _, c, _ in during if c == k) for k in sorted({c for _, c, _ in during})},
            "restart_s": marks["start"] - marks["restart"],
            "requests_during": len(during),
            "answer_ms_during_p50": float(np.median([d for *_, d in during]) * 1e3) if during else None,
            "answer_ms_during_max": float(max(d for *_, d in during) * 1e3) if during else None,
            "first_200_after_db_back_s": (min(after_ok) - marks["start"]) if after_ok else None,
            "non_200_after_recovery": sum(1 for s, c, _ in timeline if after_ok and s > min(after_ok) and c != 200)}


def models(work: Path) -> dict:
    """Artifacts for the latency table besides the bundled model (and the heavier load run): the PCA model bundled before it
    (bench/serve/pca_wafer.py), and PatchCore with a 1% coreset, the pixel VAE and the feature-space VAE at
    their default sizes, fitted on 100 synthetic 256 x 256 wafers (seed 5). The VAEs are trained for one
    epoch: latency does not depend on how well a network is trained, only on its shape."""
    from fabguard.anomaly.export import export_onnx
    from fabguard.anomaly.synthetic import synthetic_set
    from fabguard.registry import get

    train = synthetic_set(100, 0, 256, seed=5).images
    from bench.serve.pca_wafer import VERSION, pca_wafer

    out = {VERSION: pca_wafer(work)[0]}
    for version, kind, params in (("patchcore-wafer-v0.0.1", "patchcore", {"coreset_ratio": 0.01}),
                                  ("vae-wafer-v0.0.1", "vae", {"epochs": 1}),
                                  ("feature-vae-wafer-v0.0.1", "feature-vae", {"epochs": 1})):
        detector = get("detector", kind)(seed=5, **params).fit(train)
        out[version] = export_onnx(detector, work / f"{version}.onnx", seed=5)
    return out


def sequential(server: Server, n: int, bodies: list[bytes]) -> dict:
    """``n`` inspections one after another from httpx, then ``n`` from the standard library's client,
    which does less per request (the difference between the two is the client's time, not the service's),
    each after 20 unmeasured ones (the first answers after a start or a promotion warm caches): HTTP times
    and the inference times the answers report, in ms, and the versions that answered."""
    out = {"httpx": [], "httpx_inference": [], "stdlib": [], "stdlib_inference": [], "versions": set()}
    with httpx.Client(base_url=server.url, timeout=30) as web:
        for i in range(n + 20):
            start = time.perf_counter()
            r = web.post("/api/v1/inspect", params={"wafer_id": "WF-1", "inspection_point": i},
                         content=bodies[i % len(bodies)])
            elapsed = (time.perf_counter() - start) * 1e3
            answer = r.raise_for_status().json()
            if i >= 20:
                out["httpx"].append(elapsed)
                out["httpx_inference"].append(answer["inference_time_ms"])
                out["versions"].add(answer["model_version"])
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for i in range(n + 20):
        start = time.perf_counter()
        connection.request("POST", f"/api/v1/inspect?wafer_id=WF-2&inspection_point={i}", body=bodies[i % len(bodies)],
                           headers={"Content-Type": "application/octet-stream"})
        response = connection.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - start) * 1e3
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
        answer = json.loads(data)
        if i >= 20:
            out["stdlib"].append(elapsed)
            out["stdlib_inference"].append(answer["inference_time_ms"])
            out["versions"].add(answer["model_version"])
    connection.close()
    return out


def percentiles(values) -> dict:
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def cpu_times() -> list[int] | None:
    """This machine's CPU time so far by kind (/proc/stat; None where there is none)."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return None


def steal(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of CPU time the hypervisor gave to others between two :func:`cpu_times` (steal)."""
    if before is None or after is None:
        return None
    spent = [a - b for a, b in zip(after, before)]
    return spent[7] / max(sum(spent), 1)


def timed_runs(servers: dict[str, Server], args, bodies: list[bytes]) -> dict[str, dict]:
    """``--latency-runs`` runs of :func:`sequential` against each of ``servers``, taking turns run by run:
    this machine's tail changes from minute to minute, so each server meets the same minutes, and the p99
    of one run is one draw. Per server, each run's p50 / p99 per client and their medians over the runs,
    which the table shows. ``gap_ms``: HTTP p99 minus inference p99 (the issue's target); ``added_ms``:
    each request's HTTP time minus its own ONNX call; ``steal``: the share of CPU time the hypervisor
    gave to others during the run."""
    runs: dict[str, list] = {name: [] for name in servers}
    for _ in range(args.latency_runs):
        for name, server in servers.items():
            before = cpu_times()
            timed = sequential(server, args.latency_n, bodies)
            run = {"versions": sorted(timed["versions"]), "steal": steal(before, cpu_times())}
            for client in ("httpx", "stdlib"):
                http_ms, inference_ms = np.array(timed[client]), np.array(timed[f"{client}_inference"])
                run[client] = {"http_ms": percentiles(http_ms), "inference_ms": percentiles(inference_ms),
                               "added_ms": percentiles(http_ms - inference_ms),
                               "gap_ms": float(np.percentile(http_ms, 99) - np.percentile(inference_ms, 99))}
            runs[name].append(run)
    return {name: summarise(server_runs) for name, server_runs in runs.items()}


def summarise(runs: list[dict]) -> dict:
    """One server's runs and their medians (:func:`timed_runs`)."""
    out = {"runs": runs, "versions": sorted({v for run in runs for v in run["versions"]})}
    steals = [run["steal"] for run in runs if run["steal"] is not None]
    out["steal"] = float(np.median(steals)) if steals else None
    for client in ("httpx", "stdlib"):
        out[client] = {"gap_ms": float(np.median([run[client]["gap_ms"] for run in runs])),
                       **{k: {q: float(np.median([run[client][k][q] for run in runs])) for q in ("p50", "p99")}
                          for k in ("http_ms", "inference_ms", "added_ms")}}
    return out


def phase_floor(args, bodies, work: Path) -> dict:
    """The HTTP floor (:mod:`floor_app`) at concurrency 1, measured as the service is."""
    server = Floor(work / "floor").start()
    try:
        return {"n": args.latency_n, **timed_runs({"floor": server}, args, bodies)["floor"]}
    finally:
        server.stop()


def phase_latency(args, bodies, work: Path, version: str | None = None, artifact: Path | None = None) -> dict:
    """Per-stage times in process, and HTTP at concurrency 1, for the bundled model or ``artifact``."""
    from fabguard.client import Client
    from fabguard.serve import images as serve_images
    from fabguard.serve.config import load_settings
    from fabguard.serve.app import start
    from fabguard.serve.engine import score_batch
    from fabguard.serve.schemas import InspectionResult

    name = version or "bundled"
    service = start(load_settings(home=work / f"latency-{name}", token=TOKEN, threads=1))
    model = service.registry.serving if artifact is None else \
        (service.registry.register(artifact, version, REPORT), service.registry.load(version))[1]
    stages = {k: [] for k in ("decode", "preprocess", "model", "score_decision", "heatmap", "heatmap_png",
                              "serialisation")}
    for i in range(args.latency_n):
        body = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        pixels = serve_images.decode(body, 2**24)
        t1 = time.perf_counter()
        [result] = score_batch(model, [pixels])
        t2 = time.perf_counter()
        kept = io.BytesIO()
        np.save(kept, serve_images.heatmap_planes(result.pixels, result.heatmap), allow_pickle=False)
        t3 = time.perf_counter()
        answer = InspectionResult(wafer_id="WF-1", inspection_point=1, anomaly_score=result.score,
                                  decision=result.decision, confidence=result.confidence, heatmap_url="/x.png",
                                  latent_vector=result.latent.tolist(), model_version=result.version,
                                  inference_time_ms=result.inference_ms, inspection_id="0" * 32).model_dump_json()
        t4 = time.perf_counter()
        png = serve_images.overlay_png(np.load(io.BytesIO(kept.getvalue()), allow_pickle=False))  # on GET
        t5 = time.perf_counter()
        stages["decode"].append((t1 - t0) * 1e3)
        stages["preprocess"].append(result.preprocess_ms)
        stages["model"].append(result.inference_ms)
        stages["score_decision"].append(result.decide_ms)
        stages["heatmap"].append((t3 - t2) * 1e3)
        stages["heatmap_png"].append((t5 - t4) * 1e3)
        stages["serialisation"].append((t4 - t3) * 1e3)
        assert png and answer
    service.engine.dispose()
    server = Server(work / f"latency_http-{name}", {"FABGUARD_THREADS": "1"}).start()
    if artifact is not None:
        with Client(server.url, token=TOKEN, timeout=120) as admin:
            admin.register(artifact, version, REPORT)
            admin.promote(version, force=True)
    call_ms = float(np.median(stages["model"]))
    floor = Floor(work / f"floor-{name}", call_ms).start()  # the same model call, and nothing of the service's
    timed = timed_runs({"service": server, "floor": floor}, args, bodies)
    floor.stop()
    assert timed["service"]["versions"] == [model.version], timed["service"]["versions"]
    with httpx.Client(base_url=server.url, timeout=30) as web:
        log = [line for line in web.get("/metrics").text.splitlines()
               if line.startswith("fabguard_log_write_seconds_")]
    server.stop()
    total = float(next(x.split()[-1] for x in log if "_sum" in x))
    count = float(next(x.split()[-1] for x in log if "_count" in x))
    return {"model": model.version, "n": args.latency_n,
            "stages_ms": {k: percentiles(v) for k, v in stages.items()},
            "log_commit_ms_mean": total / count * 1e3, **timed["service"],
            "floor": {"call_ms": call_ms, **timed["floor"]}}


def write(results: dict) -> None:
    from fabguard.serve.bundle import VERSION

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# fabguard serve bench ({results['machine']})", ""]
    loads = results.get("load_average", {})
    lines += [f"- {phase}: `{command}`" + (f" (1-min load average {loads[phase][0]:.1f} before, {loads[phase][1]:.1f} "
                                          "after)" if phase in loads else "")
              for phase, command in results.get("commands", {}).items()] or [f"Command: `{results['command']}`"]
    lines += [""]
    for model, load_ in results.get("load", {}).items():
        lines += [f"## Load on loopback: {VERSION if model == 'bundled' else model}", "",
                  f"{results['args']['clients']} clients (threads, a keep-alive `http.client` connection each) x "
                  f"{results['args']['seconds']} s, synthetic 256 x 256 PNGs, "
                  f"{'the bundled model' if model == 'bundled' else 'PatchCore with a 1% coreset'} serving; server and "
                  "clients share the machine.", "",
                  "| mode | requests | errors | throughput /s | p50 ms | p99 ms | mean batch |",
                  "|---|---|---|---|---|---|---|"]
        for mode, r in load_.items():
            lines.append(f"| {mode} | {r['requests']} | {r['errors']} | {r['throughput_per_s']:.1f} | "
                         f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['batch_size_mean']:.2f} |")
        gain = load_["batching"]["throughput_per_s"] / load_["no batching"]["throughput_per_s"] - 1
        lines += ["", f"Throughput gain of dynamic batching: {gain:+.0%}.", "",
                  f"`{SWITCH}` (the serving artifact again) promoted at 1/3 and rolled back at 2/3 of each run "
                  "(the HTTP call; the promotion loads it, the rollback returns to a loaded model):"]
        for mode, r in load_.items():
            ev = r["events"]
            lines.append(f"- {mode}: versions answered {r['versions']}; promote took "
                         f"{ev.get('promote_s', float('nan')):.3f} s, rollback {ev.get('rollback_s', float('nan')):.3f} s.")
        lines += [""]
    k = results.get("kill")
    if k:
        lines += ["## kill -9 during load", "", f"Answered 200: {k['answered_200']}; in the log: {k['logged']}; "
                  f"answered but missing from the log: {k['answered_but_missing']}; SQLite integrity_check: "
                  f"{k['integrity_check']}; restart to ready: {k['restart_to_ready_s']:.1f} s; first inspection "
                  f"after restart: HTTP {k['status_after_restart']}.", ""]
    o = results.get("outage")
    if o:
        lines += ["## PostgreSQL stopped during load", "",
                  f"{o['clients']} clients; PostgreSQL stopped (immediate) for {o['outage_s']} s. Requests started while it was "
                  "down (from `pg_ctl stop` returning to `pg_ctl start` beginning): "
                  f"{o['requests_during']} requests, answered (status: count) {o['statuses_during']}, median {o['answer_ms_during_p50']:.1f} "
                  f"ms, max {o['answer_ms_during_max']:.1f} ms. `pg_ctl start` took {o['restart_s']:.1f} s; first 200 "
                  f"{o['first_200_after_db_back_s']:.2f} s after it returned, without restarting the service; non-200 after that: "
                  f"{o['non_200_after_recovery']}.", ""]
    lats = results.get("latency")
    if lats:
        lines += latency_lines(lats, results["latency_floor"])
    (OUT / "serve.md").write_text("\n".join(lines))


def latency_lines(lats: dict, floor: dict) -> list[str]:
    rows = (("Image transfer + HTTP (end-to-end minus in-process stages)", "5 ms", None),
            ("Decode (PNG/TIFF -> float)", "(in preprocessing)", "decode"),
            ("Preprocessing (resize)", "2 ms", "preprocess"),
            ("Model forward (ONNX Runtime)", "8 ms", "model"),
            ("Anomaly score + decision + confidence + embedding", "1 ms + < 1 ms", "score_decision"),
            ("Heatmap data: 8-bit planes saved after the answer", "2 ms (async)", "heatmap"),
            ("Heatmap PNG, drawn when its URL is fetched", "-", "heatmap_png"),
            ("Response serialisation", "< 1 ms", "serialisation"))
    names = list(lats)
    first = lats[names[0]]
    lines = ["## Latency budget at concurrency 1 (this CPU, ONNX Runtime 1 thread)", "",
             f"256 x 256 images. Per-stage p50 / p99 in ms measured in process ({first['n']} images per model). HTTP "
             f"through a `fabguard serve` process on loopback, keep-alive: {len(first['runs'])} runs of {first['n']} "
             "requests from httpx and then from the standard library's `http.client` (which does less per request: "
             "the difference is the client's time); each HTTP figure is the median of the runs' figures, and the "
             "target row gives each run's value too.", "",
             "| component | case-study budget | " + " | ".join(f"{lats[n]['model']} p50 / p99" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]

    def row(label: str, budget: str, cell) -> str:
        return f"| {label} | {budget} | " + " | ".join(cell(lats[n]) for n in names) + " |"

    def both(part: dict) -> str:
        return f"{part['p50']:.3f} / {part['p99']:.3f}"

    def inner(lat: dict) -> float:  # the in-process stages on an inspection's way to its answer
        return sum(lat["stages_ms"][k]["p50"] for k in ("decode", "preprocess", "model", "score_decision",
                                                        "serialisation")) + lat["log_commit_ms_mean"]
    for label, budget, key in rows:
        lines.append(row(label, budget, (lambda lat, key=key: both(lat["stages_ms"][key])) if key else
                         (lambda lat: f"{lat['httpx']['http_ms']['p50'] - inner(lat):.3f}")))
    lines.append(row("Log commit (mean, from /metrics)", "-", lambda lat: f"{lat['log_commit_ms_mean']:.3f}"))
    for client, name in (("httpx", "httpx"), ("stdlib", "`http.client`")):
        lines += [row(f"**HTTP end-to-end**, {name}", "~20 ms", lambda lat: both(lat[client]["http_ms"])),
                  row("inference (ONNX call, from the answers)", "8 ms", lambda lat: both(lat[client]["inference_ms"])),
                  row(f"**HTTP p99 - inference p99**, {name} (target <= 5 ms): median (each run)", "",
                      lambda lat: f"{lat[client]['gap_ms']:.3f} ("
                                  + ", ".join(f"{r[client]['gap_ms']:.1f}" for r in lat["runs"]) + ")"),
                  row(f"HTTP minus the request's own ONNX call, per request, {name}", "",
                      lambda lat: both(lat[client]["added_ms"])),
                  row(f"floor with the model's call: HTTP p99 - call p99, {name}: median (each run)", "",
                      lambda lat: f"{lat['floor'][client]['gap_ms']:.3f} ("
                                  + ", ".join(f"{r[client]['gap_ms']:.1f}" for r in lat["floor"]["runs"]) + ")")]
    lines.append(row("floor: the call's length (the model's in-process ONNX p50), ms", "",
                     lambda lat: f"{lat['floor']['call_ms']:.3f}"))
    lines.append(row("CPU steal during the HTTP runs, service / floor (median of runs)", "",
                     lambda lat: "n/a" if lat["steal"] is None else
                     f"{lat['steal']:.1%} / {lat['floor']['steal']:.1%}"))
    lines += ["", "HTTP floor on this machine: `bench/serve/floor_app.py`, the same FastAPI / uvicorn stack answering a "
              "fixed inspection-sized response after reading the body and one round trip to a worker thread (no "
              f"decode, model, scoring or log), measured in the same way: p50 / p99 {both(floor['httpx']['http_ms'])} "
              f"ms with httpx, {both(floor['stdlib']['http_ms'])} ms with `http.client`. The floor rows in the table "
              "run that stack with a native call of the model's length in place of the model (GIL released, as ONNX "
              "Runtime's is), taking turns run by run with the service: what this machine adds to a request "
              "around a call that long, before any of the service's own work. Steal: the share of CPU time the "
              "hypervisor gave to other machines during the runs (/proc/stat).", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--kill-after", type=float, default=5)
    parser.add_argument("--outage-clients", type=int, default=10)
    parser.add_argument("--outage-at", type=float, default=3)
    parser.add_argument("--outage-for", type=float, default=5)
    parser.add_argument("--latency-n", type=int, default=1000, help="requests per model and run (p99: the 10th "
                                                                       "slowest)")
    parser.add_argument("--latency-runs", type=int, default=3, help="HTTP runs per model and client (median shown)")
    parser.add_argument("--bundled-only", action="store_true", help="latency and load of the bundled model only")
    parser.add_argument("--phases", type=lambda t: t.split(","), default=["latency", "load", "kill", "outage"],
                        help="comma-separated subset of latency,load,kill,outage (default: all)")
    args = parser.parse_args()
    bodies = images()
    with tempfile.TemporaryDirectory(prefix="fabguard-bench-") as folder:
        work = Path(folder)
        results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                   "command": "python bench/serve/bench_serve.py " + " ".join(sys.argv[1:]), "args": vars(args)}
        loads = results["load_average"] = {}  # the 2 cores may be shared: the 1-min load before and after
        fitted = {}

        def heavier() -> dict:  # fitted once, for the latency and the load phases
            if not fitted:
                fitted.update(models(work))
            return fitted
        if "latency" in args.phases:
            before = os.getloadavg()[0]
            results["latency_floor"] = phase_floor(args, bodies, work)
            results["latency"] = {"bundled": phase_latency(args, bodies, work)}
            if not args.bundled_only:
                for version, artifact in heavier().items():
                    results["latency"][version] = phase_latency(args, bodies, work, version, artifact)
            loads["latency"] = [before, os.getloadavg()[0]]
        if "load" in args.phases:
            before = os.getloadavg()[0]
            results["load"] = {"bundled": phase_load(args, bodies, work)}
            if not args.bundled_only:  # a heavier model, whose per-image time falls more with the batch size
                version = "patchcore-wafer-v0.0.1"
                results["load"][version] = phase_load(args, bodies, work, version, heavier()[version])
            loads["load"] = [before, os.getloadavg()[0]]
        for phase, run in (("kill", phase_kill), ("outage", phase_outage)):
            if phase in args.phases:
                before = os.getloadavg()[0]
                results[phase] = run(args, bodies, work)
                loads[phase] = [before, os.getloadavg()[0]]
    previous = OUT / "serve.json"
    if previous.exists() and set(args.phases) != {"latency", "load", "kill", "outage"}:
        earlier = json.loads(previous.read_text())  # phases not run now keep their last results and command
        for phase in ("latency", "load", "kill", "outage"):
            if phase not in args.phases and phase in earlier:
                results[phase] = earlier[phase]
                if phase == "latency":
                    results["latency_floor"] = earlier["latency_floor"]
                if phase in earlier.get("load_average", {}):
                    results["load_average"][phase] = earlier["load_average"][phase]
                results.setdefault("commands", {})[phase] = earlier.get("commands", {}).get(phase, earlier["command"])
    for phase in args.phases:
        results.setdefault("commands", {})[phase] = results["command"]
    write(results)
    print((OUT / "serve.md").read_text())


if __name__ == "__main__":
    main()
