"""Writing files safely: atomic replacement, JSON records, and checking a folder can be written before work starts."""
from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from upanets_lab.errors import UserError, WriteError, one_line


@functools.cache
def _umask() -> int:
    """The process umask, read once (reading it means setting it: done on first use, never at import)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write ``path`` through a file object that replaces it only once everything is on disk.

    The data goes to a uniquely named temporary file in the same folder, which is flushed, fsynced and
    renamed over ``path``: readers see the old file or the new one, never a mix. If the block raises,
    the temporary file is removed and ``path`` keeps its bytes; temporary files left by a killed writer
    are removed by a later write of the same path once they are an hour old (a younger one may be another
    process's write in progress). OS errors (a full disk, a read-only folder) are raised as WriteErrors
    that name ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.????????.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if stale.stat().st_mtime < time.time() - 3600:
                    stale.unlink()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        # The file gets the permissions open() would give it, not mkstemp's private 0600.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as e:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _naming(e, path) from None
        raise


def _naming(error: OSError, path: Path) -> WriteError:
    """``error`` as a WriteError naming ``path`` (a write to a full disk reports no file name)."""
    return WriteError(error.errno, error.strerror or str(error), str(path))


def check_writable(folder: str | os.PathLike) -> None:
    """Raise UserError unless ``folder`` exists writable or could be created, leaving nothing behind.

    Tried for real, with a folder made and removed in its nearest existing parent: permission bits do not
    tell (root passes os.access almost everywhere, yet cannot make folders in /proc or on a read-only mount).
    """
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".upanets-write-test-", dir=existing))
    except OSError as e:
        reason = "not a folder" if not existing.is_dir() else e.strerror or one_line(e)
        raise UserError(f"cannot write to {folder}: {existing} is not a writable folder ({reason})") from None


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON-able Python (paths to str), for ``args.json`` and checkpoints."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    # Subclasses (torch.__version__, numpy's floats) become their base types: they would pickle as themselves.
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return None if value is None else str(value)


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    with atomic_write(path, "w") as f:
        f.write(json.dumps(jsonable(data), indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``, or None if it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)
