"""Writing files safely: one temp naming scheme, atomic writes, stale-temp clean-up.

Every writer puts its bytes in ``.<name>.<host>.<pid>.tmp<suffix>`` next to the target and
renames it over the target when done, so a reader never sees half a file and a failure
leaves the old one intact. The host name is in the temp name because a folder can be shared
between machines: a process id says whether a writer is alive only on its own host.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def host_tag() -> str:
    """This machine's name as it appears in temp names (letters, digits, ``_`` and ``-`` only)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def temp_path(path: str | Path) -> Path:
    """The temp file a write of ``path`` goes through (it keeps the suffix: writers pick the format from it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{host_tag()}.{os.getpid()}.tmp{path.suffix}")


_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.tmp(?P<suffix>\.[^.]*)?")


def temp_target(name: str) -> str | None:
    """The target's file name of a temp file's name (None if ``name`` is no temp file of ours)."""
    m = _TEMP.fullmatch(name)
    return m["name"] if m else None


def named(e: OSError, path: str | Path) -> OSError:
    """``e`` with ``path`` as its file name when it has none (a full disk fails in write())."""
    return e if e.filename else type(e)(e.errno, e.strerror, str(path))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield the temp path of ``path``; it replaces ``path`` only if the block succeeds.
    An OSError names ``path``, not the temp file."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise named(e, path) from None
    finally:
        with contextlib.suppress(OSError):   # a parent that is not a folder cannot hold it anyway
            tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    """Atomic JSON write; a failure leaves no temp file and names ``path``."""
    write_text(path, json.dumps(data, indent=2, default=float))


def remove_stale_temps(folder: str | Path, target: str = "*") -> list[Path]:
    """Delete the temp files of ``target`` in ``folder`` that a killed process of this host left
    (its pid no longer running). Another host's temp files are never touched: its writer may live."""
    removed, host = [], host_tag()
    for tmp in Path(folder).glob(f".{target}.*.tmp*"):
        m = _TEMP.fullmatch(tmp.name)
        if m and m["host"] == host and not _running(int(m["pid"])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# errno -> the fix to suggest for a path that cannot be read or written
_OS_FIXES = {
    errno.EACCES: "choose a location you may write to, or change its permissions",
    errno.EPERM: "choose a location you may write to, or change its permissions",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.EISDIR: "the path is a folder; name a file instead",
    errno.ENOTDIR: "a parent of the path is a file, not a folder; choose another path",
    errno.EEXIST: "a file is in the way of a folder; choose another path",
    errno.ENOSPC: "the disk is full; free space or choose another disk",
    errno.EDQUOT: "the disk quota is used up; free space or choose another disk",
    errno.ENOENT: "check the path",
}


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: the path, what went wrong, and the fix.

    An atomic write fails on its temp file (:func:`temp_path`) or on the rename to
    the target; the line names the target either way.
    """
    path = e.filename2 or e.filename
    if path is not None:
        target = temp_target(Path(str(path)).name)
        path = Path(str(path)).with_name(target) if target else path
    where = f"{path}: " if path is not None else ""
    what = e.strerror or e.__class__.__name__
    fix = _OS_FIXES.get(e.errno)
    return f"{where}{what}" + (f" (fix: {fix})" if fix else "")
