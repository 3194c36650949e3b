"""Experiment files on a local disk or in object storage (any URI pyarrow's filesystems take).

S3: ``s3://bucket/prefix``, credentials and endpoint from the standard AWS
sources, which pyarrow, Ray's storage, boto3 and the aws CLI all read: an
instance profile (IAM role) or ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
and for an S3-compatible server (MinIO, moto, ...) ``AWS_ENDPOINT_URL_S3``
(or ``AWS_ENDPOINT_URL``), e.g. ``http://127.0.0.1:9000``. No query string in
the URI: experiment paths are built by appending to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = ["StorageError", "check_reachable", "experiment_uri", "filesystem", "exists", "read_json", "write_bytes",
           "read_table", "write_table", "upload_dir"]


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


# S3 settings for check_reachable only. pyarrow's defaults (the AWS SDK's: 3
# attempts with back-off, no connect timeout of its own) make a wrong endpoint
# cost 6 s per call when the port is closed and much longer when packets are
# dropped; the check must answer within seconds, before Ray starts.
S3_CHECK_CONNECT_TIMEOUT_S = 3.0
S3_CHECK_REQUEST_TIMEOUT_S = 5.0
S3_CHECK_ATTEMPTS = 2
WRITE_CHECK_FILE = ".aalr-ray-write-check"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:400] or type(exc).__name__


def _s3_endpoint(fs: pafs.FileSystem, options: dict) -> str:
    """Where an S3 filesystem sends its requests, for error messages."""
    endpoint = options.get("endpoint_override") or ""
    if endpoint and "://" not in endpoint:  # given as host:port, with the scheme apart
        endpoint = f"{options.get('scheme', 'https')}://{endpoint}"
    # pyarrow copies AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL into endpoint_override.
    return endpoint or f"AWS S3, region {getattr(fs, 'region', '?')}"


def _s3_options(fs: pafs.FileSystem) -> dict | None:
    """The keyword arguments that rebuild ``fs`` (its pickle state), or None if not S3."""
    s3 = getattr(pafs, "S3FileSystem", None)
    if s3 is None or not isinstance(fs, s3):
        return None
    try:
        return dict(fs.__reduce__()[1][0])
    except (TypeError, IndexError, KeyError):
        return {}


def check_reachable(storage: str) -> None:
    """Raise StorageError (one line) unless ``storage`` exists or can be made, and takes a write.

    Called before Ray starts, so that a wrong S3 endpoint, a missing bucket,
    missing credentials or a read-only location fail here in seconds with one
    line, not as a hang or as every trial failing. Local paths are created.
    The S3 endpoint comes from the environment, the same for pyarrow, Ray's
    storage, boto3 and the aws CLI: ``AWS_ENDPOINT_URL_S3`` (or
    ``AWS_ENDPOINT_URL``); on AWS itself none is needed.
    """
    if "://" in storage and "?" in storage:
        # Experiment paths are built by appending "/<name>/<file>" to the URI,
        # which a query string would swallow.
        raise StorageError(f"storage {storage!r}: no query string in the URI, please; give an S3 endpoint "
                           "with the AWS_ENDPOINT_URL_S3 environment variable (e.g. http://127.0.0.1:9000) "
                           "and the region with AWS_REGION")
    try:
        fs, path = filesystem(storage)  # on AWS this may look up the bucket's region
    except (OSError, ValueError) as exc:
        raise StorageError(f"storage {storage!r} is not usable: {_one_line(exc)}") from None
    options = _s3_options(fs)
    where = ""
    if options is not None:
        where = f" (endpoint {_s3_endpoint(fs, options)})"
        if options:  # the same filesystem, with short timeouts and one retry
            fs = pafs.S3FileSystem(**{**options, "connect_timeout": S3_CHECK_CONNECT_TIMEOUT_S,
                                      "request_timeout": S3_CHECK_REQUEST_TIMEOUT_S},
                                   retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_CHECK_ATTEMPTS))
    try:
        if options is not None:
            bucket = path.split("/", 1)[0]
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise StorageError(f"storage {storage!r} is not usable{where}: bucket {bucket!r} not found "
                                   "(a wrong endpoint, or a bucket not created yet)")
        else:
            fs.create_dir(path, recursive=True)
        probe = f"{path.rstrip('/')}/{WRITE_CHECK_FILE}"
        with fs.open_output_stream(probe) as f:
            f.write(b"ok\n")
        fs.delete_file(probe)
    except (OSError, ValueError) as exc:
        raise StorageError(f"storage {storage!r} is not usable{where}: {_one_line(exc)}") from None


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
