"""Experiment files on a local disk or in object storage (any URI pyarrow's filesystems take).

S3: ``s3://bucket/prefix``, credentials and endpoint from the standard AWS
sources, which pyarrow, Ray's storage, boto3 and the aws CLI all read: an
instance profile (IAM role) or ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
and for an S3-compatible server (MinIO, moto, ...) ``AWS_ENDPOINT_URL_S3``
(or ``AWS_ENDPOINT_URL``), e.g. ``http://127.0.0.1:9000``. No query string in
the URI: experiment paths are built by appending to it.

Every write is atomic (a temporary beside the target, then a move) and fails
with one-line StorageError; ExperimentLock keeps a second grid driver off an
experiment while the first one lives.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import one_line
from .files import atomic_open

__all__ = ["StorageError", "ExperimentLockedError", "ExperimentLock", "LOCK_FILE", "check_reachable",
           "check_writable", "experiment_uri", "filesystem", "exists", "read_json", "write_bytes", "write_file",
           "read_file", "uri_of", "read_table", "write_table", "atomic_write_local", "upload_dir"]

log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """Storage that cannot be reached or written; the message is one line."""


class ExperimentLockedError(StorageError):
    """Another driver holds the experiment; the message names its host and pid."""


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


def _s3_endpoint(fs: pafs.FileSystem, options: dict) -> str:
    """Where an S3 filesystem sends its requests, for error messages."""
    endpoint = options.get("endpoint_override") or ""
    if endpoint and "://" not in endpoint:  # given as host:port, with the scheme apart
        endpoint = f"{options.get('scheme', 'https')}://{endpoint}"
    # pyarrow copies AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL into endpoint_override.
    return endpoint or f"AWS S3, region {getattr(fs, 'region', '?')}"


def _s3_options(fs: pafs.FileSystem) -> dict | None:
    """The keyword arguments that rebuild ``fs`` ({} when unknown), or None if it is not S3."""
    s3 = getattr(pafs, "S3FileSystem", None)
    if s3 is None or not isinstance(fs, s3):
        return None
    from ._ray_compat import s3_filesystem_options  # where work-arounds of library internals live

    return s3_filesystem_options(fs)


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
        raise StorageError(f"storage {storage!r} is not usable: {one_line(exc)}") from None
    check_writable(fs, path, f"storage {storage!r}")


def check_writable(fs: pafs.FileSystem, path: str, label: str) -> None:
    """:func:`check_reachable` for a filesystem in hand; ``label`` starts the one-line StorageError.

    A trial calls it on its own storage before it trains: a node that cannot
    reach S3 then fails the trial in seconds with a line naming the endpoint.
    """
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
                raise StorageError(f"{label} is not usable{where}: bucket {bucket!r} not found "
                                   "(a wrong endpoint, or a bucket not created yet)")
        else:
            fs.create_dir(path, recursive=True)
        probe = f"{path.rstrip('/')}/{WRITE_CHECK_FILE}"
        with fs.open_output_stream(probe) as f:
            f.write(b"ok\n")
        fs.delete_file(probe)
    except (OSError, ValueError) as exc:
        raise StorageError(f"{label} is not usable{where}: {one_line(exc)}") from None


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_json(uri: str):
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


# ------------------------------------------------------------------ writing
# Every write goes through _write_atomic: the bytes go to a temporary file
# beside the target, under a name unique to this write, which is then moved
# into place. A reader (or a resumed grid) sees the old file or the new one,
# never half of one, and two writers of the same file never share a temporary.
# A local file is written by aalr_ray.files.atomic_open, the writer of every
# local file; the code here adds the remote case and the one-line errors.
#
# On S3 too we write a temporary object and move it (a server-side copy, then
# a delete) rather than PUT the target directly: a PUT is all-or-nothing, but
# pyarrow's S3 stream *completes* its upload when it is closed or destroyed
# after an error (tried here against moto: an exception inside
# ``with fs.open_output_stream(...)`` leaves the partial object), so a failed
# direct write could leave a truncated target. The temporary absorbs that and
# is deleted. The copy costs one request; our files are far below S3's 5 GB
# single-copy limit.

def _temp_path(path: str) -> str:
    directory, name = path.rsplit("/", 1)
    return f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"


def _is_no_space(exc: OSError) -> bool:
    # pyarrow sets errno for local files; its S3 errors carry only the text.
    return exc.errno == errno.ENOSPC or "No space left on device" in str(exc)


def _write_error(uri: str, exc: OSError) -> StorageError:
    if _is_no_space(exc):
        return StorageError(f"cannot write {uri}: no space left on device")
    return StorageError(f"cannot write {uri}: {one_line(exc)}")


def _remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:  # never written, or the storage is gone: the first error is the one to report
        pass


def _target(uri: str) -> tuple[pafs.FileSystem, str]:
    try:  # on S3 this may already go to the network (the bucket's region)
        return filesystem(uri)
    except OSError as exc:
        raise _write_error(uri, exc) from None


def _write_remote(fs: pafs.FileSystem, path: str, fill: Callable[[BinaryIO], object]) -> None:
    """A temporary object beside ``path``, then a move (see above)."""
    tmp = _temp_path(path)
    if _s3_options(fs) is None:  # S3 has no directories; other stores may need them
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    try:
        with fs.open_output_stream(tmp) as stream:
            fill(stream)
        fs.move(tmp, path)
    except BaseException:  # KeyboardInterrupt too: leave no temporary behind
        _remove_quietly(fs, tmp)
        raise


def _write_atomic(fs: pafs.FileSystem, path: str, uri: str, fill: Callable[[BinaryIO], object]) -> None:
    """``fill`` writes the content to the binary stream it is given; ``uri`` names the target in errors."""
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            with atomic_open(path, "wb") as stream:
                fill(stream)
        else:
            _write_remote(fs, path, fill)
    except OSError as exc:
        raise _write_error(uri, exc) from None


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically; StorageError (one line) on failure."""
    fs, path = _target(uri)
    _write_atomic(fs, path, uri, lambda stream: stream.write(data))


def atomic_write_local(path: str | os.PathLike, data: bytes) -> None:
    """Write a local file atomically (files.atomic_open: unique temporary beside it, then os.replace).

    StorageError (one line naming the path) on failure; the temporary is removed.
    """
    path = os.path.abspath(path)  # named absolute in errors, as every other local path here
    _write_atomic(pafs.LocalFileSystem(), path, path, lambda stream: stream.write(data))


def read_table(uri: str) -> pa.Table:
    fs, path = filesystem(uri)
    return pq.read_table(path, filesystem=fs)


def write_table(uri: str, table: pa.Table) -> None:
    """Write ``table`` to ``uri`` as Parquet, atomically; StorageError (one line) on failure."""
    fs, path = _target(uri)
    _write_atomic(fs, path, uri, lambda stream: pq.write_table(table, stream))


def write_file(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` on ``fs`` atomically; StorageError (one line) on failure.

    For callers that hold a filesystem already (a trial's storage from Ray),
    not a URI.
    """
    _write_atomic(fs, path, uri_of(fs, path), lambda stream: stream.write(data))


def read_file(fs: pafs.FileSystem, path: str) -> bytes:
    """The bytes of ``path`` on ``fs``; FileNotFoundError when it is absent, StorageError on other failures."""
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(uri_of(fs, path)) from None
        raise StorageError(f"cannot read {uri_of(fs, path)}: {one_line(exc)}") from None


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """``path`` on ``fs`` as a user would write it (``s3://bucket/key`` or a local path), for messages."""
    return path if isinstance(fs, pafs.LocalFileSystem) else f"{fs.type_name}://{path}"


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local directory's files into ``uri``, each atomically (a no-op when it is the same place)."""
    fs, path = _target(uri)
    if isinstance(fs, pafs.LocalFileSystem) and Path(path).resolve() == Path(local_dir).resolve():
        return
    for source in sorted(Path(local_dir).rglob("*")):
        if source.is_file():
            relative = source.relative_to(local_dir).as_posix()
            with open(source, "rb") as src:
                _write_atomic(fs, f"{path.rstrip('/')}/{relative}", f"{uri.rstrip('/')}/{relative}",
                              lambda stream: shutil.copyfileobj(src, stream))


# ------------------------------------------------------------------ the experiment lock
LOCK_FILE = ".aalr-ray.lock"
# An S3 lease not renewed for this long belongs to a dead driver: after a driver is killed
# (a lost head), `--resume` is refused for up to this long. AALR_RAY_LOCK_TTL_S changes it.
LOCK_TTL_S = 60.0
LOCK_TTL_ENV = "AALR_RAY_LOCK_TTL_S"
LOCK_SETTLE_S = 2.0  # S3: wait between writing our lease and reading it back


def lock_ttl() -> float:
    """The S3 lease's time to live: $AALR_RAY_LOCK_TTL_S seconds (5 to 3600), else LOCK_TTL_S."""
    value = os.environ.get(LOCK_TTL_ENV)
    if value is None:
        return LOCK_TTL_S
    try:
        ttl = float(value)
    except ValueError:
        ttl = float("nan")
    if not 5 <= ttl <= 3600:
        raise StorageError(f"{LOCK_TTL_ENV}={value!r}: give a number of seconds from 5 to 3600")
    return ttl


def _now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _holder(info: dict | None) -> str:
    if not info:
        return "another driver (which has not written its details yet)"
    return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, started {info.get('started', '?')}"


class ExperimentLock:
    """One grid driver per experiment, held for the driver's whole run::

        with ExperimentLock(experiment_uri):
            ...  # run the grid

    A second driver on the same experiment gets ExperimentLockedError (a
    StorageError), one line naming the holder's host, pid and start time.
    A lock left by a dead driver (kill -9, a lost machine) is taken over.
    Not re-entrant: a second lock on the same experiment in the same process
    is refused too.

    Local storage: ``<experiment>/.aalr-ray.lock``, held with ``flock``. The
    kernel drops the lock when the holder dies, however it dies, so a stale
    file is never a live lock; the file's JSON ({host, pid, started, argv}) is
    only there for the refusal message. The descriptor is close-on-exec, so
    the processes Ray starts do not inherit the lock; a child *forked* without
    exec would share it and keep it alive after the driver. On NFS, Linux maps
    flock onto NFS byte-range locks, which work across clients.

    Any other filesystem (S3, ...): a lease object at the same path, JSON
    {owner, host, pid, started, argv, renewed (epoch s), ttl_s}, rewritten by
    a daemon thread every ttl/3. Acquire: read it; a lease renewed less than
    its ttl ago by another owner refuses us; otherwise write ours, wait
    ``settle_s``, read it back and go on only if it is still ours (S3 reads
    are strongly consistent after a write: of two drivers starting together,
    the last writer wins and the other one sees it). What remains:
    - Two drivers both proceed only if one's read-to-write gap (a few
      requests) spans the other's whole settle delay (2 s by default).
      S3's conditional PUT (If-None-Match) would close that gap, but pyarrow
      does not expose it.
    - Expiry compares the lease's ``renewed`` (the holder's clock) with the
      reader's clock: clocks must agree to well within the ttl (NTP does).
    - A holder stalled for longer than the ttl (suspended, partitioned) can be
      taken over; its renewal thread then notices, stops, logs a warning and
      sets ``lost``; ``check()`` raises it for a driver that wants to stop.
    Release deletes the lease only if it is still ours.
    """

    def __init__(self, experiment_uri: str, *, ttl_s: float | None = None, settle_s: float = LOCK_SETTLE_S):
        ttl_s = lock_ttl() if ttl_s is None else ttl_s
        self.experiment = experiment_uri.rstrip("/")
        self.uri = f"{self.experiment}/{LOCK_FILE}"
        self.ttl_s, self.settle_s = ttl_s, settle_s
        self.lost: str | None = None  # set when another driver took our S3 lease over
        self._fs: pafs.FileSystem | None = None
        self._path = ""
        self._fd: int | None = None  # local: the flock'ed descriptor
        self._owner = uuid.uuid4().hex  # S3: who we are in the lease
        self._started: dict = {}  # S3: our host, pid, start time and argv, written with every renewal
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> ExperimentLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _info(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "started": _now_iso(), "argv": sys.argv}

    def _refusal(self, info: dict | None, extra: str = "") -> ExperimentLockedError:
        return ExperimentLockedError(f"experiment {self.experiment} is in use by another aalr-ray driver "
                                     f"({_holder(info)}){extra}; wait for it to finish or stop it first")

    def acquire(self) -> None:
        """Take the lock or raise ExperimentLockedError; StorageError when the storage fails."""
        try:
            self._fs, self._path = filesystem(self.uri)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot lock {self.uri}: {one_line(exc)}") from None
        if isinstance(self._fs, pafs.LocalFileSystem):
            self._acquire_local()
        else:
            self._acquire_lease()

    def release(self) -> None:
        """Give the lock up; never raises (it runs while another error may be propagating)."""
        if self._fd is not None:
            # The file stays: unlinking it would let a driver that opened it just
            # before lock the deleted file while a third one creates and locks a
            # new one, and both would run. Its JSON means nothing without the flock.
            # Unlock before closing: a forked child sharing the descriptor would keep it locked.
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join()
            self._renewer = None
            try:  # read then delete: racing only a driver that found our lease expired anyway
                if (self._read_lease() or {}).get("owner") == self._owner:
                    self._fs.delete_file(self._path)
            except OSError as exc:  # it expires on its own within ttl_s
                log.warning("could not delete the lock %s: %s", self.uri, one_line(exc))

    def check(self) -> None:
        """Raise ExperimentLockedError if another driver has taken our lease over."""
        if self.lost:
            raise ExperimentLockedError(self.lost)

    # -- local: flock
    def _acquire_local(self) -> None:
        try:
            os.makedirs(os.path.dirname(self._path), exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _write_error(self.uri, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = self._read_local_info(fd)
            os.close(fd)
            raise self._refusal(info) from None
        except OSError as exc:  # no locks on this filesystem (NFS without lockd, some FUSE mounts)
            os.close(fd)
            raise StorageError(f"cannot lock {self.uri}: {one_line(exc)}") from None
        try:  # ours now: nobody else writes the file while we hold the flock
            data = json.dumps(self._info()).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError as exc:
            os.close(fd)  # drops the flock
            raise _write_error(self.uri, exc) from None
        self._fd = fd

    @staticmethod
    def _read_local_info(fd: int) -> dict | None:
        # The holder writes its details just after taking the flock: give it a moment.
        for _ in range(20):
            try:
                return json.loads(os.pread(fd, 1 << 16, 0))
            except (OSError, ValueError):
                time.sleep(0.05)
        return None

    # -- any other filesystem: a renewed lease
    def _read_lease(self) -> dict | None:
        """The lease, or None when there is none (or it is not one of ours: garbage is taken over)."""
        try:
            with self._fs.open_input_stream(self._path) as stream:
                lease = json.loads(stream.read())
        except (FileNotFoundError, ValueError):
            return None
        return lease if isinstance(lease, dict) else None

    @staticmethod
    def _age_and_ttl(lease: dict) -> tuple[float, float]:
        """Seconds since the lease was renewed (by our clock) and its ttl; a malformed one is expired."""
        try:
            return time.time() - float(lease["renewed"]), float(lease["ttl_s"])
        except (KeyError, TypeError, ValueError):
            return float("inf"), 0.0

    def _write_lease(self) -> None:
        lease = {"owner": self._owner, **self._started, "renewed": time.time(), "ttl_s": self.ttl_s}
        data = json.dumps(lease).encode()
        _write_atomic(self._fs, self._path, self.uri, lambda stream: stream.write(data))

    def _acquire_lease(self) -> None:
        try:
            held = self._read_lease()
            if held and held.get("owner") != self._owner:
                age, ttl = self._age_and_ttl(held)
                if age < ttl:
                    raise self._refusal(held, f", its lease renewed {age:.0f} s ago")
                log.warning("taking over the lock %s of a driver that stopped renewing it %.0f s ago (%s)",
                            self.uri, age, _holder(held))
            self._started = self._info()
            self._write_lease()
            time.sleep(self.settle_s)
            held = self._read_lease()
        except OSError as exc:
            raise StorageError(f"cannot lock {self.uri}: {one_line(exc)}") from None
        if not held or held.get("owner") != self._owner:  # another driver wrote after us: it wins
            raise self._refusal(held)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name="aalr-ray-lock-renewal", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                held = self._read_lease()
                if held and held.get("owner") != self._owner:
                    self.lost = (f"the lock on experiment {self.experiment} was taken over by another driver "
                                 f"({_holder(held)}) after this one failed to renew it for {self.ttl_s:.0f} s")
                    log.warning(self.lost)
                    return
                self._write_lease()
            except Exception as exc:  # noqa: BLE001 -- a network blip or anything else: tried again next tick
                log.warning("could not renew the lock %s: %s", self.uri, one_line(exc))
