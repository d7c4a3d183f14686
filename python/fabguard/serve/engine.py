"""Inference off the event loop, with dynamic batching, and what each image's result holds.

A request decodes its image on a worker thread and queues it; then that same thread scores what is
queued, unless another one already is (they take turns: one batch at a time). The thread scoring takes
the first queued image and, while other requests are still decoding or queued, waits at most
``max_wait_ms`` for them (up to ``max_batch``), then scores the batch in one ONNX Runtime call, as Triton's
``dynamic_batching`` does, and commits its inspections to the log in one transaction (a group commit); a
lone request never waits. The serving model and the running experiment are read once per batch, so a
promotion, rollback or canary change never mixes versions inside a group, and each result names the
version that scored it (a canary candidate scores its wafers in its own call).
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from fabguard.serve.metrics import Metrics
from fabguard.serve.registry import Loaded, Registry

LATENT_DIM = 128


class NotReady(RuntimeError):
    """No model is serving yet (HTTP 503)."""


@dataclass
class Result:
    score: float
    decision: str
    confidence: float
    heatmap: np.ndarray  # (S, S)
    pixels: np.ndarray  # (3, S, S), the model's input: for the heatmap overlay
    latent: np.ndarray  # (128,) float32
    version: str
    inference_ms: float  # the ONNX Runtime call of this image's batch
    preprocess_ms: float  # this image's resize / normalisation
    decide_ms: float  # scores -> decisions, confidence and embedding of the batch


def confidence(score: float, review: float, reject: float) -> float:
    """How far ``score`` is from flipping its decision: ``1 - exp(-d / w) / 2``, with ``d`` the distance to
    the nearest decision threshold and ``w`` the REVIEW band's width (reject - review: the spread of the
    validation scores between the two calibrated quantiles). 0.5 on a threshold (a coin flip), rising to 1
    far from both; a band of width 0 uses 1e-6 of the threshold's magnitude (at least 1e-12)."""
    width = reject - review
    if width <= 0:
        width = max(abs(review) * 1e-6, 1e-12)
    distance = min(abs(score - review), abs(score - reject))
    return 1.0 - 0.5 * math.exp(-distance / width)


def score_batch(model: Loaded, arrays: list[np.ndarray], in_model: threading.Event | None = None) -> list[Result]:
    """Score images, each (3, H, W) float32 in [0, 1], with ``model`` (on the thread scoring the batch);
    ``in_model`` is set during the ONNX Runtime call."""
    from fabguard.anomaly.images import resize
    from fabguard.anomaly.reference import grid_embedding
    from fabguard.anomaly.runtime import LATENT

    inspector = model.inspector
    start = time.perf_counter()
    batch = np.stack([resize(a, inspector.input_size) for a in arrays])
    prepared = time.perf_counter()
    if in_model is not None:
        in_model.set()
    try:
        outputs = dict(zip(model.outputs, inspector.run(inspector.session, batch, inspector.max_batch)))
    finally:
        if in_model is not None:
            in_model.clear()
    ran = time.perf_counter()
    scores, heatmaps = outputs["score"], outputs["heatmap"]
    decisions = inspector.thresholds.decide(scores)
    t = inspector.thresholds
    latent = outputs.get(LATENT)
    latents = latent.reshape(len(batch), -1) if latent is not None and latent.shape[-1] == LATENT_DIM else \
        grid_embedding(heatmaps)
    conf = [confidence(float(s), t.review, t.reject) for s in scores]
    done = time.perf_counter()
    per_pre = (prepared - start) * 1e3 / len(batch)
    latents = latents.astype(np.float32)
    return [Result(float(scores[i]), str(decisions[i]), conf[i], heatmaps[i], batch[i], latents[i], model.version,
                   (ran - prepared) * 1e3, per_pre, (done - ran) * 1e3) for i in range(len(batch))]


class Batcher:
    """Gathers concurrent requests into batches and scores them off the event loop.

    A request crosses threads once each way: the event loop hands its bytes to a worker thread, which
    decodes, queues and, when no other thread is scoring, scores and logs the queue itself, then hands
    each answer back to the loop. A separate inference thread would add a thread hand-off to every
    request; on a virtual machine whose idle cores sleep, a wake-up costs a large share of a millisecond."""

    def __init__(self, registry: Registry, metrics: Metrics, max_batch: int, max_wait_ms: float):
        self.registry, self.metrics = registry, metrics
        self.log: Callable[[list[dict]], None] | None = None  # commits a group's inspections (set by the app)
        self.experiments = None  # fabguard.serve.experiments.Experiments, set by the app
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1e3
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.arriving = 0  # requests decoding their image: a batch waits for them, never for nobody
        self.lock = threading.Lock()  # guards ``arriving``
        self.scoring = threading.Lock()  # held by the one thread scoring batches
        # set while a batch is inside ONNX Runtime, which has released the GIL: work done after an answer
        # waits for it, so as not to hold the GIL while the next request is being read and decoded
        self.in_model = threading.Event()

    def beside_model(self, work: Callable, wait_s: float):
        """``work()`` on this thread once a batch enters ONNX Runtime, or after ``wait_s`` when none does.
        The service's periodic work (garbage collection, following promotions) then holds the GIL while
        the request's thread is in native code, instead of stalling a request being decoded or answered."""
        self.in_model.wait(wait_s)
        return work()

    async def stop(self) -> None:
        """Score whatever is still queued (each request's thread normally has)."""
        await asyncio.get_running_loop().run_in_executor(None, self._drain)

    async def score(self, decode, row: dict) -> tuple[Result, dict, np.ndarray]:
        """Decode (``decode()`` on a worker thread), score and log one image; ``row`` holds the inspection's
        own fields (id, wafer, point, file references). Returns the result, the logged row (with the arm
        that decided it: ``production`` or ``canary``) and the decoded image (for a shadow candidate)."""
        if self.registry.serving is None:
            raise NotReady("no model is serving yet")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self.lock:
            self.arriving += 1
        loop.run_in_executor(None, self._decode_queue_and_score, decode, row, future, loop)  # answers via ``future``
        return await future

    def _decode_queue_and_score(self, decode, row: dict, future: asyncio.Future, loop) -> None:
        try:
            array = decode()
        except BaseException as exc:  # noqa: BLE001  (the request's answer: 415, 413, ...)
            with self.lock:
                self.arriving -= 1
            loop.call_soon_threadsafe(_deliver, future, None, exc)
            return
        self.metrics.queue_depth.inc()
        self.queue.put((array, row, future, loop))
        with self.lock:  # after the put: the scoring thread sees the job queued or still arriving
            self.arriving -= 1
        self._drain()

    def _drain(self) -> None:
        """Score batches until the queue is empty, unless another thread is scoring: it takes this job
        too. The queue is looked at again after the lock is released, so a job queued by a thread that
        found the lock taken is never left behind."""
        while not self.queue.empty():
            if not self.scoring.acquire(blocking=False):
                return
            try:
                while jobs := self._gather():
                    self._score_groups(jobs)
            finally:
                self.scoring.release()

    def _gather(self) -> list:
        """The next batch (empty: nothing queued). Waits at most ``max_wait`` past the first job, and only
        while other requests are still decoding."""
        jobs: list = []
        deadline = None
        while len(jobs) < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                if deadline is None:  # nothing queued at all
                    break
                left = deadline - time.monotonic()
                if left <= 0 or self.arriving == 0:
                    break
                try:
                    job = self.queue.get(timeout=left)
                except queue.Empty:
                    break
            jobs.append(job)
            if deadline is None:
                deadline = time.monotonic() + self.max_wait
        self.metrics.queue_depth.dec(len(jobs))
        live = [job for job in jobs if not job[2].cancelled()]  # clients that went away
        return live if live or not jobs else self._gather()

    def _score_groups(self, jobs: list) -> None:
        """Score and log ``jobs``; every waiting request gets its answer, a result or the exception."""
        try:
            model = self.registry.serving  # read once: each group is scored by one version
            running = self.experiments.running if self.experiments is not None else None
            canary = [running is not None and running.decides(row["wafer_id"]) for _, row, _, _ in jobs]
            self.metrics.batch_size.observe(len(jobs))
        except Exception as exc:  # noqa: BLE001  (each request gets an answer)
            for _, _, future, loop in jobs:
                loop.call_soon_threadsafe(_deliver, future, None, exc)
            return
        for arm, use in (("production", model), ("canary", running.candidate if running else None)):
            group = [job for job, c in zip(jobs, canary) if c == (arm == "canary")]
            if not group:
                continue
            try:
                results, rows = self._score_and_log(use, arm, [j[0] for j in group], [j[1] for j in group])
            except Exception as exc:  # noqa: BLE001  (delivered to each waiting request: its answer)
                for _, _, future, loop in group:
                    loop.call_soon_threadsafe(_deliver, future, None, exc)
                continue
            self.metrics.inference.observe(results[0].inference_ms / 1e3)
            for (array, _, future, loop), result, row in zip(group, results, rows):
                loop.call_soon_threadsafe(_deliver, future, (result, row, array), None)

    def _score_and_log(self, model: Loaded, arm: str, arrays: list[np.ndarray], rows: list[dict]):
        """Score a group and commit its inspections in one transaction: each is in the log before its
        answer is sent, at one commit per batch."""
        from fabguard.serve.drift import encode_latent

        results = score_batch(model, arrays, self.in_model)
        now = datetime.now(timezone.utc)
        rows = [{**row, "created_at": now, "model_version": r.version, "anomaly_score": r.score,
                 "decision": r.decision, "confidence": r.confidence, "inference_time_ms": r.inference_ms,
                 "arm": arm, "latent": encode_latent(r.latent)} for row, r in zip(rows, results)]
        self.log(rows)
        return results, rows


def _deliver(future: asyncio.Future, result, exc: BaseException | None) -> None:
    """On the event loop: answer a waiting request, unless its client went away."""
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
