"""The errors a user can act on, and how other errors are told in one line.

Library code raises :class:`UserError` (or a subclass) for a problem the user can fix: a bad flag value, a
missing or damaged file, a checkpoint of another model. Only the scripts' runner (``commandline.run_cli``) prints it,
as one ``error: ...`` line with exit code 2.
"""
from __future__ import annotations

import re
import sys


class UserError(Exception):
    """A problem the user can fix (a bad flag value, a damaged checkpoint, ...); its message is one line that
    names the problem and what to do."""


class WriteError(OSError):
    """Writing a file failed (a full disk, a read-only folder); ``filename`` is the file, ``strerror`` why."""


def one_line(e: BaseException) -> str:
    """``Type: message`` of an exception on one line, for messages that quote a library's error."""
    return " ".join(f"{type(e).__name__}: {e}".split())


def describe_out_of_memory(error: BaseException) -> str | None:
    """"out of memory on the CPU/GPU (a request for N GiB)" if ``error`` says memory ran out, else None."""
    text = str(error)
    # torch is not imported here (compare.py reads results without it); an error of torch's means it is loaded.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        where = "the GPU"
    elif isinstance(error, MemoryError) or "can't allocate memory" in text:  # the latter: torch's CPU allocator
        where = "the CPU"
    else:
        return None
    # torch's CPU allocator gives bytes, its CUDA allocator and NumPy a size with a unit.
    in_bytes = re.search(r"tried to allocate (\d+) bytes", text)
    with_unit = re.search(r"(?:Tried to allocate|Unable to allocate) ([0-9.]+ [KMGTP]?i?B)", text)
    size = f"{int(in_bytes.group(1)) / 2**30:,.2f} GiB" if in_bytes else with_unit and with_unit.group(1)
    return f"out of memory on {where}" + (f" (a request for {size})" if size else "")


class DataError(UserError):
    """A data set is missing or malformed; the message names the file and what to do."""
