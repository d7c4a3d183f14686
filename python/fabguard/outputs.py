"""Output files and model folders that appear whole or not at all, checked before the work starts.

Commands call :func:`check_output` for every output path while parsing their arguments, so a path
that cannot be written (read-only folder, the input file itself, a folder where a file goes) is
refused before any long computation; then they write through :func:`atomic_path` (one file) or
:func:`atomic_dir` (a model folder), which move the finished result into place in one rename.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from fabguard.errors import InputError


def _umask_mode(base: int) -> int:
    """``base`` (0o666 for files, 0o777 for folders) less the process umask: what ``open`` would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def check_output(path: str | os.PathLike, what: str = "output", inputs: Iterable[str | os.PathLike] = (),
                 folder: bool = False) -> Path:
    """Refuse an output path before work starts: the parent folder must exist (or be creatable) and be
    writable; the path must not be one of ``inputs`` nor lie inside an input folder (a model folder); an
    existing path must be of the right kind: a regular file (or a link to one) for a file output, never a
    device, pipe or socket, and a folder for a folder output. Returns the path."""
    target = Path(path)
    if str(path) == "":
        raise InputError(f"{what}: empty path")
    resolved = target.resolve()
    for source in inputs:
        if source is None or not Path(source).exists():
            continue
        source_resolved = Path(source).resolve()
        if source_resolved == resolved:
            kind = "folder" if source_resolved.is_dir() else "file"
            raise InputError(f"{what} {target}: is the input {kind} {source}; choose another path")
        if source_resolved.is_dir() and resolved.is_relative_to(source_resolved):
            raise InputError(f"{what} {target}: lies inside the input folder {source}; choose another path")
    if resolved.exists():
        if folder and not resolved.is_dir():
            raise InputError(f"{what} {target}: is {_kind(resolved)}; expected a folder path")
        if not folder and not resolved.is_file():
            raise InputError(f"{what} {target}: is {_kind(resolved)}; expected a file path")
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{what} {target}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (resolved.exists() and not os.access(resolved, os.W_OK)):
        raise InputError(f"{what} {target}: no permission to write in {parent}")
    return target


def _kind(path: Path) -> str:
    if path.is_dir():
        return "a folder"
    if path.is_file():
        return "a file"
    mode = path.stat().st_mode
    return ("a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a pipe" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    A crash, an error or Ctrl-C while writing leaves any earlier file at ``path`` untouched and no
    partial file behind. The file gets the mode the user's umask gives (as ``open`` would). A device, pipe
    or socket at ``path`` is refused, never replaced by a regular file.
    """
    target = Path(path).resolve()  # through a symbolic link: the file it points to is replaced, the link stays
    if target.exists() and not target.is_file():
        raise InputError(f"{path}: is {_kind(target)}; expected a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp{target.suffix}"
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside ``path``; when the block succeeds, it replaces ``path`` (an
    earlier folder there is moved aside, then removed). On an error or Ctrl-C the new folder is removed
    and ``path`` keeps its earlier content whole: a model folder is never a mix of two models."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, _umask_mode(0o777))
    old = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.old"
    try:
        yield tmp
        if target.exists():
            os.rename(target, old)
        os.rename(tmp, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.rename(old, target)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
