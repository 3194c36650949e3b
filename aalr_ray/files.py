"""The one atomic writer of local files.

Every local file aalr-ray writes (checkpoints, epoch logs, downloaded data,
Tune state bundles, Parquet tables on a local storage path) goes through
``atomic_open``: a temporary with a unique name in the same directory, then
``os.replace``. A reader or a process killed mid-write sees the old file or
the new one, never a torn one, and two writers never share a temporary. No
fsync: the copies that must survive a machine failure are the ones in Ray's
storage, and an fsync per epoch stalls behind every dirty page of a busy disk.
Standard library only.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary beside ``path`` for writing; it replaces ``path`` when the block ends normally.

    On any exception (KeyboardInterrupt included) the temporary is removed and
    ``path`` is left as it was. The parent directory is created if needed.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> with atomic_open(target, "w") as f:
    ...     _ = f.write("{}\\n")
    >>> target.read_text()
    '{}\\n'
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as stream:
            # mkstemp makes the file 0600; results and reports are shared, so
            # they get the mode that open() would give (0666 less the umask).
            os.fchmod(stream.fileno(), 0o666 & ~_umask())
            yield stream
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status") as status:  # Linux 4.7 and later
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (see atomic_open)."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as stream:
        stream.write(data)
