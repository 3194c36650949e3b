"""Experiment files on a local disk or in object storage (any URI pyarrow's filesystems take)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = ["StorageError", "check_reachable", "experiment_uri", "filesystem", "exists", "read_json", "write_bytes", "read_table", "write_table",
           "upload_dir"]


class StorageError(RuntimeError):
    """Storage that cannot be reached or written; the message is one line."""


def experiment_uri(storage: str, name: str) -> str:
    """``<storage>/<name>`` as a URI, or as an absolute local path."""
    if "://" in storage:
        return storage.rstrip("/") + "/" + name
    return str(Path(storage).expanduser().resolve() / name)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) for a URI or a local path."""
    return pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), str(uri))


def check_reachable(storage: str) -> None:
    """Raise StorageError (one line) if ``storage`` cannot be listed or created.

    Local paths are created. For object storage this is the place to fail
    fast and clearly, before Ray starts any trial.
    """
    fs, path = filesystem(storage)
    try:
        fs.create_dir(path, recursive=True)
        fs.get_file_info(path)
    except (OSError, ValueError) as exc:
        raise StorageError(f"storage {storage!r} is not usable: {str(exc).splitlines()[0]}") from None


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_json(uri: str):
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def read_table(uri: str) -> pa.Table:
    fs, path = filesystem(uri)
    return pq.read_table(path, filesystem=fs)


def write_table(uri: str, table: pa.Table) -> None:
    """Write beside, then move: a reader never sees half a file."""
    fs, path = filesystem(uri)
    directory, name = path.rsplit("/", 1)
    tmp = f"{directory}/.{name}.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local directory's files into ``uri`` (a no-op when it is the same place)."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem) and Path(path).resolve() == Path(local_dir).resolve():
        return
    pafs.copy_files(str(local_dir), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
