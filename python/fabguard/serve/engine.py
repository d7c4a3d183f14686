"""Inference off the event loop, with dynamic batching, and what each image's result holds.

Requests queue as decoded (3, H, W) float images (decoding and pixel checks happen before, per request). One worker task takes the first, waits at most ``max_wait_ms``
for more (up to ``max_batch``), and scores them in one ONNX Runtime call on a dedicated thread, as
Triton's ``dynamic_batching`` does. The serving model is read once per batch, so a promotion or rollback
never mixes versions inside a batch, and each result names the version that scored it.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fabguard.serve.metrics import Metrics
from fabguard.serve.registry import Loaded, Registry

LATENT_DIM = 128
EMBED_GRID = (8, 16)  # 8 x 16 = 128 cells


class NotReady(RuntimeError):
    """No model is serving yet (HTTP 503)."""


@dataclass
class Result:
    score: float
    decision: str
    confidence: float
    heatmap: np.ndarray  # (S, S)
    pixels: np.ndarray  # (3, S, S), the model's input: for the heatmap overlay
    latent: list[float]
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


def embedding(heatmap: np.ndarray) -> np.ndarray:
    """The 128-dim embedding of detectors without a latent output: the heatmap averaged over an 8 x 16 grid
    (rows x columns, row-major): where on the image the anomaly lies and how strong it is."""
    h = np.asarray(heatmap, np.float64)
    rows, cols = (np.array_split(np.arange(n), k) for n, k in zip(h.shape, EMBED_GRID))
    sums = np.add.reduceat(np.add.reduceat(h, [r[0] for r in rows], axis=0), [c[0] for c in cols], axis=1)
    return (sums / np.outer([len(r) for r in rows], [len(c) for c in cols])).ravel()


def score_batch(model: Loaded, arrays: list[np.ndarray]) -> list[Result]:
    """Score images, each (3, H, W) float32 in [0, 1], with ``model`` (runs on the inference thread)."""
    from fabguard.anomaly.images import resize
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
        np.stack([embedding(h) for h in heatmaps])
    conf = [confidence(float(s), t.review, t.reject) for s in scores]
    done = time.perf_counter()
    per_pre = (prepared - start) * 1e3 / len(batch)
    return [Result(float(scores[i]), str(decisions[i]), conf[i], heatmaps[i], batch[i],
                   [float(v) for v in latents[i]], model.version, (ran - prepared) * 1e3, per_pre,
                   (done - ran) * 1e3) for i in range(len(batch))]


class Batcher:
    """Gathers concurrent requests into batches and runs them off the event loop."""

    def __init__(self, registry: Registry, metrics: Metrics, max_batch: int, max_wait_ms: float):
        self.registry, self.metrics = registry, metrics
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1e3
        self.queue: asyncio.Queue = asyncio.Queue()
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

    async def submit(self, array: np.ndarray) -> Result:
        if self.registry.serving is None:
            raise NotReady("no model is serving yet")
        future = asyncio.get_running_loop().create_future()
        self.metrics.queue_depth.inc()
        self.queue.put_nowait((array, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            self.metrics.queue_depth.dec(len(jobs))
            jobs = [(a, f) for a, f in jobs if not f.cancelled()]  # clients that went away
            if not jobs:
                continue
            model = self.registry.serving  # read once: the whole batch is scored by one version
            self.metrics.batch_size.observe(len(jobs))
            try:
                results = await loop.run_in_executor(self.executor, score_batch, model, [a for a, _ in jobs])
            except Exception as exc:  # delivered to each waiting request, which turns it into its answer
                for _, future in jobs:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.metrics.inference.observe(results[0].inference_ms / 1e3)
            for (_, future), result in zip(jobs, results):
                if not future.done():
                    future.set_result(result)
