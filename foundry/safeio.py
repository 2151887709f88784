"""Writes that survive crashes and full disks, and a JSONL reader that names damage (torch-free).

Run directories, checkpoints, prepared data sets and eval results are written through one of three paths:
    write_bytes_atomic / write_text_atomic   a temporary file in the same directory, fsynced, then renamed
                                             over the target: the old file or the new one, never half of one
    LineLog                                  append-only lines (metrics.jsonl): a line that cannot be written
                                             whole is cut back off, so the file ends on the last whole line
    guard_disk_full                          around any other write (a checkpoint directory, a prepared data set)

A full disk (ENOSPC), a quota (EDQUOT) or a file-size limit (EFBIG: `ulimit -f`, a scheduler's limit) raises
`DiskFullError`, which names the path, the space the write needed and what is still intact, and says that
re-running the same command after freeing space continues. It is an OSError, so callers that handle I/O
errors keep doing so.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"  # not reached


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes available to this user on the file system holding `path` (its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _file_size_limit() -> int | None:
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        return None if soft == resource.RLIM_INFINITY else soft
    except (ImportError, ValueError, OSError):
        return None


class DamagedFileError(ValueError):
    """A file foundry reads is damaged or missing; the message names it and what to do. `restart_hint`:
    the message ends with "...:" for the caller to complete with the exact command that starts again."""

    restart_hint = False


class DiskFullError(OSError):
    """A write that did not fit: the message names the path, the space needed and what stayed intact."""

    def __init__(self, path: str | os.PathLike, needed: int | None = None, cause: OSError | None = None,
                 kept: str = ""):
        self.path, self.needed = Path(path), needed
        code = cause.errno if cause is not None and cause.errno else errno.ENOSPC
        need = f" (the write needs about {fmt_bytes(needed)})" if needed else ""
        if code == errno.EFBIG:
            limit = _file_size_limit()
            what = (f"the file-size limit{'' if limit is None else f' of {fmt_bytes(limit)}'} "
                    f"(`ulimit -f`) was reached{need}; raise the limit")
        else:
            free = free_bytes(self.path)
            what = (f"the disk is full{need}, {'?' if free is None else fmt_bytes(free)} free there; "
                    f"free some space")
        kept = f" {kept[0].upper()}{kept[1:].rstrip('.')}." if kept else ""
        self.message = f"{self.path}: {what} and run the same command again to continue.{kept}"
        super().__init__(self.message)  # args == (message,): handlers that print e.args[0] print the message
        self.errno, self.filename = code, str(self.path)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # across process boundaries (a sweep worker) the message travels as written
        return _rebuilt_disk_full, (self.message, self.errno, str(self.path), self.needed)


def _rebuilt_disk_full(message: str, code: int, path: str, needed: int | None) -> DiskFullError:
    e = DiskFullError.__new__(DiskFullError)
    OSError.__init__(e, message)
    e.message, e.errno, e.filename, e.path, e.needed = message, code, path, Path(path), needed
    return e


@contextmanager
def guard_disk_full(path: str | os.PathLike, needed: int | None = None, kept: str = "") -> Iterator[None]:
    """Turn ENOSPC / EDQUOT / EFBIG raised inside the block into a DiskFullError about `path`."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as e:
        if e.errno in FULL_ERRNOS:
            raise DiskFullError(path, needed, e, kept) from None
        raise


def check_free_space(path: str | os.PathLike, needed: int, kept: str = "") -> None:
    """Refuse a write of `needed` bytes under `path` before starting it when the disk plainly lacks the room."""
    free = free_bytes(path)
    if free is not None and free < needed:
        raise DiskFullError(path, needed, OSError(errno.ENOSPC, "no space"), kept)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file(path: str | os.PathLike, data: bytes) -> None:
    """Write and fsync `data` to a new file (inside a temporary directory that is renamed later)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` by `data` atomically; on any failure (a full disk included) the old file is unchanged
    and no temporary file is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = f"the previous {path.name} is unchanged" if path.exists() else "nothing was written"
    with guard_disk_full(path, len(data), kept):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class LineLog:
    """An append-only text file written a whole line at a time. A line the disk cannot take is cut back off
    (the file is truncated to where it was), so the file always ends on the last line that fitted."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, line: str) -> None:
        data = line.encode("utf-8")
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            os.ftruncate(self._fd, size)
            if e.errno in FULL_ERRNOS:
                raise DiskFullError(self.path, len(data), e, f"{self.path.name} ends on its last whole line") from None
            raise

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None


def read_jsonl(path: str | os.PathLike, what_to_do: str = "", warn=None) -> list[dict]:
    """Rows of a JSONL file (none when it does not exist). A torn last line (a kill mid-write) is dropped
    silently; a line before it that is not a JSON object is damage: skipped, and reported through `warn`
    (default: a line on stderr) with the file, the line number and `what_to_do`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    rows, bad = [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
            rows.append(row)
        except ValueError:
            if i < len(lines) - 1:   # a line that ended with a newline was written whole: it was damaged since
                bad.append(i + 1)
    if bad and (warn is not None or (str(p.absolute()), bad[0]) not in _WARNED):
        _WARNED.add((str(p.absolute()), bad[0]))  # a file polled for progress is reported once, not every poll
        warn = warn or (lambda msg: print(msg, file=sys.stderr))
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        warn(f"warning: {p}: line {bad[0]}{more} is not a JSON object (the file is damaged); skipped"
             + (f". {what_to_do}" if what_to_do else ""))
    return rows


_WARNED: set[tuple[str, int]] = set()


def read_metrics(path: str | os.PathLike, warn=None) -> list[dict]:
    """Rows of a run's metrics.jsonl (foundry.train, the sweep and compare read it through this)."""
    return read_jsonl(path, "Re-running the command that trained the run continues it from its last checkpoint "
                            "and rewrites the lines after it", warn)
