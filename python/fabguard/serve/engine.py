"""Inference off the event loop, with dynamic batching, and what each image's result holds.

A request decodes its image on a worker thread, then queues it. One worker task takes the first queued
image and, while other requests are still decoding or queued, waits at most ``max_wait_ms`` for them (up to
``max_batch``), then scores the batch in one ONNX Runtime call on a dedicated thread, as Triton's
``dynamic_batching`` does, and commits its inspections to the log in one transaction (a group commit); a
lone request never waits. The serving model and the running experiment are
read once per batch, so a promotion, rollback or canary change never mixes versions inside a group, and
each result names the version that scored it (a canary candidate scores its wafers in its own call).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


def score_batch(model: Loaded, arrays: list[np.ndarray]) -> list[Result]:
    """Score images, each (3, H, W) float32 in [0, 1], with ``model`` (runs on the inference thread)."""
    from fabguard.anomaly.images import resize
    from fabguard.anomaly.reference import grid_embedding
    from fabguard.anomaly.runtime import LATENT

    inspector = model.inspector
    start = time.perf_counter()
    batch = np.stack([resize(a, inspector.input_size) for a in arrays])
    prepared = time.perf_counter()
    outputs = dict(zip(model.outputs, inspector.run(inspector.session, batch, inspector.max_batch)))
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
    """Gathers concurrent requests into batches and runs them off the event loop."""

    def __init__(self, registry: Registry, metrics: Metrics, max_batch: int, max_wait_ms: float):
        self.registry, self.metrics = registry, metrics
        self.log: Callable[[list[dict]], None] | None = None  # commits a group's inspections (set by the app)
        self.experiments = None  # fabguard.serve.experiments.Experiments, set by the app
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1e3
        self.queue: asyncio.Queue = asyncio.Queue()
        self.arriving = 0  # requests decoding their image: a batch waits for them, never for nobody
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="fabguard-inference")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def score(self, decode, row: dict) -> tuple[Result, dict, np.ndarray]:
        """Decode (``decode()`` on a worker thread), score and log one image; ``row`` holds the inspection's
        own fields (id, wafer, point, file references). Returns the result, the logged row (with the arm
        that decided it: ``production`` or ``canary``) and the decoded image (for a shadow candidate)."""
        if self.registry.serving is None:
            raise NotReady("no model is serving yet")
        self.arriving += 1
        try:
            array = await asyncio.get_running_loop().run_in_executor(None, decode)
        finally:
            self.arriving -= 1  # before the put below, with no await between: the batcher sees one or the other
        future = asyncio.get_running_loop().create_future()
        self.metrics.queue_depth.inc()
        self.queue.put_nowait((array, row, future))
        return await future

    async def _gather(self) -> list:
        loop = asyncio.get_running_loop()
        jobs = [await self.queue.get()]
        deadline = loop.time() + self.max_wait
        while len(jobs) < self.max_batch:
            try:
                jobs.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0 or self.arriving == 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        self.metrics.queue_depth.dec(len(jobs))
        return [job for job in jobs if not job[-1].cancelled()]  # clients that went away

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            if not jobs:
                continue
            model = self.registry.serving  # read once: each group is scored by one version
            running = self.experiments.running if self.experiments is not None else None
            canary = [running is not None and running.decides(row["wafer_id"]) for _, row, _ in jobs]
            self.metrics.batch_size.observe(len(jobs))
            for arm, use in (("production", model), ("canary", running.candidate if running else None)):
                group = [job for job, c in zip(jobs, canary) if c == (arm == "canary")]
                if not group:
                    continue
                try:
                    results, rows = await loop.run_in_executor(self.executor, self._score_and_log, use, arm,
                                                               [a for a, _, _ in group], [r for _, r, _ in group])
                except Exception as exc:  # delivered to each waiting request, which turns it into its answer
                    for *_, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.metrics.inference.observe(results[0].inference_ms / 1e3)
                for (array, _, future), result, row in zip(group, results, rows):
                    if not future.done():
                        future.set_result((result, row, array))

    def _score_and_log(self, model: Loaded, arm: str, arrays: list[np.ndarray], rows: list[dict]):
        """Score a group and commit its inspections in one transaction (on the inference thread): each is
        in the log before its answer is sent, at one commit per batch."""
        from fabguard.serve.drift import encode_latent

        results = score_batch(model, arrays)
        now = datetime.now(timezone.utc)
        rows = [{**row, "created_at": now, "model_version": r.version, "anomaly_score": r.score,
                 "decision": r.decision, "confidence": r.confidence, "inference_time_ms": r.inference_ms,
                 "arm": arm, "latent": encode_latent(r.latent)} for row, r in zip(rows, results)]
        self.log(rows)
        return results, rows
