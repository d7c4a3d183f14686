"""Score an image archive with an exported artifact: streaming, parallel decoding, resumable, Parquet.

Inputs are image files, folder trees (searched recursively) and zip or tar archives (members with an
image extension; a member's path is ``ARCHIVE!member``). Images are read in order, decoded in a thread
pool and scored in chunks, so memory holds about two chunks whatever the archive's size. The output is
a Parquet dataset folder: one part file per chunk, each written whole (:func:`~fabguard.outputs.atomic_path`),
so an interrupted job leaves only complete parts, and a rerun skips the paths already in them (after
checking they were scored by the same model). ``pandas.read_parquet(OUT)`` reads the whole folder.

Columns: ``path``, ``score``, ``decision`` (PASS / REVIEW / REJECT, or ERROR for an image that cannot
be decoded, with ``error`` saying why and ``score`` NaN), and with ``heatmap_stats`` the heatmap's
``heatmap_max``, ``heatmap_mean`` and ``heatmap_p99``. The engine ``ray`` runs the same scoring as Ray
Data ``map_batches`` on actors that each open one runtime session (one CPU each), on a running Ray
cluster or a local one; the driver writes the parts as above.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from fabguard.anomaly.images import EXTENSIONS
from fabguard.errors import InputError
from fabguard.params import POSITIVE_INT, check

ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
PART = re.compile(r"part-(\d{6})\.parquet")
STATS = ("heatmap_max", "heatmap_mean", "heatmap_p99")
META_KEY = b"fabguard"


@dataclass(frozen=True)
class Item:
    """One image: ``path`` is what the output says (``ARCHIVE!member`` inside an archive)."""

    path: str
    source: str
    member: str = ""  # "" for a plain file


def _archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    return "zip" if name.endswith(".zip") else "tar" if name.endswith(ARCHIVES[1:]) else None


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in EXTENSIONS


def list_items(inputs: Sequence[str | os.PathLike]) -> list[Item]:
    """Every image of ``inputs``, in input order and sorted within each; bad inputs refused first."""
    items: list[Item] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p.name))
            if not found:
                raise InputError(f"{path}: no images ({', '.join(EXTENSIONS)}) in this folder tree")
            items += [Item(str(p), str(p)) for p in found]
        elif not path.is_file():
            raise InputError(f"{path}: no such image file, folder or archive")
        elif _archive_kind(path):
            names = _archive_members(path)
            if not names:
                raise InputError(f"{path}: no images ({', '.join(EXTENSIONS)}) in this archive")
            items += [Item(f"{path}!{n}", str(path), n) for n in names]
        elif _is_image(path.name):
            items.append(Item(str(path), str(path)))
        else:
            raise InputError(f"{path}: not an image ({', '.join(EXTENSIONS)}) nor an archive ({', '.join(ARCHIVES)})")
    seen: set[str] = set()
    for item in items:
        if item.path in seen:
            raise InputError(f"{item.path}: given twice (inputs overlap)")
        seen.add(item.path)
    return items


def _archive_members(path: Path) -> list[str]:
    """Image members of a zip (sorted) or tar (in archive order: read as a stream) archive."""
    try:
        if _archive_kind(path) == "zip":
            with zipfile.ZipFile(path) as archive:
                return sorted(i.filename for i in archive.infolist() if not i.is_dir() and _is_image(i.filename))
        with tarfile.open(path, "r|*") as archive:
            return [m.name for m in archive if m.isfile() and _is_image(m.name)]
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read the archive ({exc})") from None


def payloads(items: Iterable[Item]) -> Iterator[tuple[Item, str | bytes]]:
    """(item, what to decode): a file's path (read by the decoding thread) or an archive member's bytes.
    Archives are opened once; a tar is read as one stream in archive order (``items`` keep that order)."""
    zips: dict[str, zipfile.ZipFile] = {}
    tar: tuple[str, tarfile.TarFile, Iterator] | None = None
    try:
        for item in items:
            if not item.member:
                yield item, item.source
            elif _archive_kind(Path(item.source)) == "zip":
                archive = zips.get(item.source) or zips.setdefault(item.source, zipfile.ZipFile(item.source))
                yield item, archive.read(item.member)
            else:
                if tar is None or tar[0] != item.source:
                    if tar is not None:
                        tar[1].close()
                    stream = tarfile.open(item.source, "r|*")
                    tar = (item.source, stream, iter(stream))
                member = next((m for m in tar[2] if m.name == item.member), None)
                if member is None:
                    raise InputError(f"{item.path}: not found in the archive's remaining members (archive changed?)")
                yield item, tar[1].extractfile(member).read()
    finally:
        for archive in zips.values():
            archive.close()
        if tar is not None:
            tar[1].close()


def decode_one(item: Item, payload: str | bytes, size: int) -> np.ndarray | str:
    """The model input of one image, or the reason it cannot be decoded."""
    from fabguard.anomaly.images import load_image

    try:
        return load_image(payload, size, where=item.path)
    except InputError as exc:
        return str(exc)


def score_decoded(inspector, items: Sequence[Item], decoded: Sequence[np.ndarray | str], heatmap_stats: bool) -> dict:
    """Output columns for ``items`` (decoded images or error messages, in the same order)."""
    good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
    n = len(items)
    columns = {"path": [item.path for item in items], "score": np.full(n, np.nan, np.float32),
               "decision": np.full(n, "ERROR", object), "error": [d if isinstance(d, str) else None for d in decoded]}
    stats = {name: np.full(n, np.nan, np.float32) for name in STATS} if heatmap_stats else {}
    if good:
        scores, heatmaps, *_ = inspector.run(inspector.session, np.stack([decoded[i] for i in good]), inspector.max_batch)
        columns["score"][good] = scores
        columns["decision"][good] = inspector.thresholds.decide(scores)
        if heatmap_stats:
            flat = heatmaps.reshape(len(good), -1)
            stats["heatmap_max"][good] = flat.max(axis=1)
            stats["heatmap_mean"][good] = flat.mean(axis=1)
            stats["heatmap_p99"][good] = np.percentile(flat, 99, axis=1)
    return {**columns, **stats}


def _identity(inspector) -> dict:
    """What ties an output to the model that scored it (checked when a job resumes)."""
    meta = inspector.metadata
    return {"model": meta["model"], "train_fingerprint": meta["train_fingerprint"],
            "thresholds": meta["thresholds"], "artifact": str(inspector.path)}


class PartWriter:
    """The output folder: what it already holds (for resuming) and one atomically written part per chunk."""

    def __init__(self, out: str | os.PathLike, identity: dict, heatmap_stats: bool):
        self.out, self.identity, self.heatmap_stats = Path(out), identity, heatmap_stats
        self.done: set[str] = set()
        self.next_part = 0
        if self.out.exists():
            self._read_existing()

    def _read_existing(self) -> None:
        import pyarrow.parquet as pq

        if not self.out.is_dir():
            raise InputError(f"{self.out}: is a file; the scores go to a folder of Parquet parts")
        for file in sorted(self.out.iterdir()):
            if file.name.startswith("."):  # a part being written when the job was killed: never complete
                if file.name.endswith(".tmp.parquet"):
                    file.unlink()
                continue
            match = PART.fullmatch(file.name)
            if not match:
                raise InputError(f"{self.out}: holds {file.name}, which is not a scores part; choose a new folder")
            try:
                parquet = pq.ParquetFile(file)
                meta = json.loads((parquet.schema_arrow.metadata or {}).get(META_KEY, b"{}"))
                paths = parquet.read(columns=["path"]).column("path").to_pylist()
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise InputError(f"{file}: not a readable scores part ({type(exc).__name__}: {exc})") from None
            if any(meta.get(key) != self.identity[key] for key in ("model", "train_fingerprint", "thresholds")):
                raise InputError(f"{self.out}: holds scores of another model ({meta.get('model')}, fingerprint "
                                 f"{meta.get('train_fingerprint')}); resume with that artifact or choose a new folder")
            if bool(meta.get("heatmap_stats")) != self.heatmap_stats:
                raise InputError(f"{self.out}: its parts were written {'with' if meta.get('heatmap_stats') else 'without'}"
                                 f" --heatmap-stats; resume the same way or choose a new folder")
            self.done.update(paths)
            self.next_part = max(self.next_part, int(match.group(1)) + 1)

    def write(self, columns: dict) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from fabguard.outputs import atomic_path

        table = pa.table({"path": pa.array(columns["path"], pa.string()), "score": pa.array(columns["score"], pa.float32()),
                          "decision": pa.array(list(columns["decision"]), pa.string()),
                          "error": pa.array(list(columns["error"]), pa.string()),
                          **{s: pa.array(columns[s], pa.float32()) for s in STATS if s in columns}})
        meta = {**self.identity, "heatmap_stats": self.heatmap_stats}
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        path = self.out / f"part-{self.next_part:06d}.parquet"
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        self.next_part += 1
        return path


def score_archive(artifact: str | os.PathLike, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                  engine: str = "local", chunk: int = 256, workers: int | None = None, threads: int | None = None,
                  providers: Sequence[str] | None = None, heatmap_stats: bool = False, progress: bool = False,
                  ray_address: str | None = None) -> dict:
    """Score every image of ``inputs`` not yet in ``out``; returns counts (images, skipped, errors, parts).

    ``workers``: decoding threads (local engine; default one per core) or Ray actors (default one per
    CPU of the cluster). ``threads``: ONNX Runtime threads per session (default: ONNX Runtime's locally,
    1 per Ray actor).
    """
    from fabguard.anomaly.runtime import Inspector
    from fabguard.outputs import check_output

    if engine not in ("local", "ray"):
        raise InputError(f"engine {engine!r}: expected 'local' or 'ray'")
    check("chunk", chunk, POSITIVE_INT, owner="score")
    if workers is not None:
        check("workers", workers, POSITIVE_INT, owner="score")
    check_output(out, "scores folder", inputs=[artifact, *inputs], folder=True)
    Inspector.read(artifact)  # a damaged or foreign artifact is refused before the inputs are listed
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise InputError("--engine ray needs Ray: pip install 'fabguard[ray]'") from None
    items = list_items(inputs)
    if engine == "ray" and any(item.member and _archive_kind(Path(item.source)) == "tar" for item in items):
        raise InputError("--engine ray reads archive members in any order: a tar archive is read as one stream; "
                         "extract it, repack it as zip, or use the local engine")
    inspector = Inspector(artifact, providers=providers, threads=threads)
    writer = PartWriter(out, _identity(inspector), heatmap_stats)
    todo = [item for item in items if item.path not in writer.done]
    counts = {"images": len(items), "skipped": len(items) - len(todo), "scored": 0, "errors": 0, "parts": 0}
    if todo:
        run = _run_local if engine == "local" else _run_ray
        for columns in run(inspector, artifact, todo, chunk, workers, threads, providers, heatmap_stats, progress,
                           ray_address):
            writer.write(columns)
            counts["parts"] += 1
            counts["scored"] += len(columns["path"])
            counts["errors"] += sum(e is not None for e in columns["error"])
    return counts


def _chunks(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _run_local(inspector, artifact, todo, chunk, workers, threads, providers, heatmap_stats, progress, ray_address):
    """Decode in a thread pool one chunk ahead of scoring; yield each chunk's columns."""
    from tqdm.auto import tqdm

    size = inspector.input_size
    stream = payloads(todo)
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool, \
            tqdm(total=len(todo), unit="image", desc="scoring", disable=not progress) as bar:
        pending: deque = deque()
        batches = _chunks(todo, chunk)

        def submit() -> None:
            part = next(batches, None)
            if part is not None:
                pending.append((part, [pool.submit(decode_one, item, payload, size)
                                       for item, payload in (next(stream) for _ in part)]))

        submit()
        while pending:
            submit()  # decode the next chunk while this one is scored
            part, futures = pending.popleft()
            yield score_decoded(inspector, part, [f.result() for f in futures], heatmap_stats)
            bar.update(len(part))


class _RayScorer:
    """A Ray Data actor: one runtime session, reused for every batch it gets."""

    def __init__(self, artifact: str, providers, threads: int, heatmap_stats: bool):
        from fabguard.anomaly.runtime import Inspector

        self.inspector = Inspector(artifact, providers=providers, threads=threads)
        self.heatmap_stats = heatmap_stats

    def __call__(self, batch: dict) -> dict:
        items = [Item(p, s, m) for p, s, m in zip(batch["path"], batch["source"], batch["member"])]
        size = self.inspector.input_size
        decoded = [decode_one(item, payload, size) for item, payload in payloads(items)]
        columns = score_decoded(self.inspector, items, decoded, self.heatmap_stats)
        columns["error"] = np.array(["" if e is None else e for e in columns["error"]], object)
        return {key: np.asarray(value) for key, value in columns.items()}


def _run_ray(inspector, artifact, todo, chunk, workers, threads, providers, heatmap_stats, progress, ray_address):
    """Ray Data ``map_batches`` on an actor pool; the driver gathers chunks in completion order."""
    import ray
    from tqdm.auto import tqdm

    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    actors = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    dataset = ray.data.from_items([{"path": i.path, "source": i.source, "member": i.member} for i in todo])
    scored = dataset.map_batches(_RayScorer, batch_size=min(chunk, 64), batch_format="numpy", num_cpus=1,
                                 compute=ray.data.ActorPoolStrategy(size=actors),
                                 fn_constructor_args=(os.fspath(artifact), providers, threads or 1, heatmap_stats))
    with tqdm(total=len(todo), unit="image", desc="scoring (ray)", disable=not progress) as bar:
        for batch in scored.iter_batches(batch_size=chunk, batch_format="numpy"):
            columns = {key: list(value) if key in ("path", "decision", "error") else value for key, value in batch.items()}
            columns["error"] = [e or None for e in columns["error"]]
            yield columns
            bar.update(len(columns["path"]))

