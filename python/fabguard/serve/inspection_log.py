"""Writing inspections to the log: the thread scoring a batch commits it in one transaction, so every
answered inspection is in the log before its answer is sent, at one commit per batch (a group commit)."""

from __future__ import annotations

import time

from fabguard.serve import db, review

INSERT = db.inspections.insert()  # built once: its cache key is computed once, not per commit


def log_inspections(service, rows: list[dict]) -> None:
    """Inspections and, where due for human review, their places in the review queue: one transaction
    (``service``: :class:`fabguard.serve.app.Service`, whose engine is read at each call)."""
    start = time.perf_counter()
    with service.engine.begin() as connection:
        connection.execute(INSERT, rows)
        for row in rows:
            review.queue_for_review(connection, row, service.settings)
    service.metrics.log_write.observe(time.perf_counter() - start)
