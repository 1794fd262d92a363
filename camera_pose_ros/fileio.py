"""Atomic file output: everything is written to a temporary name and renamed.

A crash or Ctrl-C never leaves a half-written CSV, JSON, image or checkpoint behind.
Temporaries are named ``.NAME.tmp-PID-TOKEN[SUFFIX]`` beside the final path, created with
the permissions of an ordinary file or folder (``0666`` / ``0777`` less the umask), and
removed on any exception, ``KeyboardInterrupt`` included. A temporary whose process is no
longer alive (a run killed with SIGKILL) is removed by the next write of the same name and
by :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from camera_pose_ros.errors import OutputError

__all__ = ["atomic_path", "atomic_dir", "write_text_atomic", "write_json_atomic",
           "remove_stale_temporaries", "check_output_file", "check_output_dir"]

log = logging.getLogger(__name__)

#: ``.NAME.tmp-PID-TOKEN[SUFFIX]``: the temporaries this module creates
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}(?:\.[^/]*)?$")


def _tmp_name(final: Path, suffix: str) -> Path:
    return final.parent / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process (or an absurd number: leave it)
    return True


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove temporaries in ``folder`` left by processes that are no longer alive.

    Args:
        folder: where to look (not recursive).
        name: only the temporaries of this final name (default: all).

    Returns:
        The paths removed. Temporaries of live processes (another run writing into the
        same folder) are kept.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if m is None or (name is not None and m["name"] != name):
            continue
        if _pid_alive(int(m["pid"])):
            continue
        try:
            _remove(entry)
        except OSError as exc:
            log.warning("cannot remove stale temporary %s: %s", entry, exc)
            continue
        log.info("removed %s, left by an interrupted run", entry)
        removed.append(entry)
    return removed


def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_parent(path: Path, what: str) -> None:
    parent = _first_existing(path.parent)
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} {path}: folder {parent} is not writable")


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check, before any work, that file ``path`` can be created or replaced.

    Raises:
        OutputError: ``path`` is a folder, a parent is a file, or the folder is not
            writable.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a folder; name a file")
    if path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot replace {what} {path}: its folder is not writable")
    _check_parent(path, what)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check, before any work, that folder ``path`` can be created or written into.

    Raises:
        OutputError: ``path`` is a file, a parent is a file, or it (or the folder it would
            be created in) is not writable.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"cannot write {what} {path}: it is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write into {what} {path}: it is not writable")
        return path
    _check_parent(path, what)
    return path


def _mkdir_parent(final: Path) -> None:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputError(f"cannot write {final}: a parent of it is a file") from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary exists (empty) when yielded, with the umask's permissions.

    Args:
        path: the final file.
        suffix: extension for the temporary file (some writers pick the format from it);
            defaults to the final file's own suffix.
    """
    final = Path(path)
    _mkdir_parent(final)
    remove_stale_temporaries(final.parent, final.name)
    suffix = suffix if suffix is not None else final.suffix
    while True:
        tmp = _tmp_name(final, suffix)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        if final.is_dir():
            raise OutputError(f"cannot write {final}: it is a folder")
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` on success."""
    final = Path(path)
    _mkdir_parent(final)
    remove_stale_temporaries(final.parent, final.name)
    while True:
        tmp = _tmp_name(final, "")
        try:
            os.mkdir(tmp, 0o777)
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        if final.exists() and not final.is_dir():
            raise OutputError(f"cannot write folder {final}: a file has that name")
        old = None
        if final.exists():  # aside first: restored if the rename fails
            old = _tmp_name(final, "")
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            if old is not None:
                os.replace(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically and return the path."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
