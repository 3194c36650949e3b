"""Storage writes and the experiment lock, without Ray.

- Every write is atomic: a unique temporary beside the target, moved into
  place; an error mid-write leaves the old file and no temporary; two writers
  of one file never share a temporary; a full disk is one line naming the
  path (checked for real on a 1 MiB tmpfs when this machine lets us mount one).
- The experiment lock: locally a flock held by a second process refuses us
  with its host and pid, and is ours once that process is killed with
  SIGKILL; on S3 (a real moto server on loopback) a lease refused while fresh,
  taken over once expired, kept alive by renewal, deleted on release.
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import s3_server

from aalr_ray import storage
from aalr_ray.storage import (LOCK_FILE, ExperimentLock, ExperimentLockedError, StorageError,
                              atomic_write_local, read_table, write_bytes, write_table)

ROOT = Path(__file__).resolve().parent.parent
HOST = socket.gethostname()


def temporaries(directory) -> list[str]:
    return sorted(p.name for p in Path(directory).rglob("*.tmp"))


def partial_then_fail(exc: BaseException):
    """A stand-in for pq.write_table that writes half a file, then fails."""
    def write(table, where, **kwargs):
        where.write(b"PAR1 half a parquet file")
        raise exc
    return write


# ====================================================================== atomic writes
def test_writes_round_trip_and_leave_no_temporaries(tmp_path):
    table = pa.table({"a": [1, 2, 3]})
    write_table(str(tmp_path / "new" / "t.parquet"), table)  # the directory is made
    write_bytes(str(tmp_path / "new" / "b.json"), b"{}")
    atomic_write_local(tmp_path / "new" / "c.txt", b"c")
    assert read_table(str(tmp_path / "new" / "t.parquet")).equals(table)
    assert (tmp_path / "new" / "b.json").read_bytes() == b"{}"
    assert (tmp_path / "new" / "c.txt").read_bytes() == b"c"
    assert temporaries(tmp_path) == []


def test_atomic_write_local_takes_a_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atomic_write_local("sub/rel.txt", b"x")
    assert (tmp_path / "sub" / "rel.txt").read_bytes() == b"x"


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, error):
    target = tmp_path / "t.parquet"
    write_table(str(target), pa.table({"a": [1]}))
    with monkeypatch.context() as patched, \
            pytest.raises(StorageError if isinstance(error, OSError) else KeyboardInterrupt) as raised:
        patched.setattr(pq, "write_table", partial_then_fail(error))
        write_table(str(target), pa.table({"a": [2]}))
    assert read_table(str(target)).column("a").to_pylist() == [1]
    assert temporaries(tmp_path) == []
    if isinstance(error, OSError):
        assert str(raised.value) == f"cannot write {target}: [Errno 5] Input/output error"


def test_a_failed_move_leaves_no_temporary(tmp_path):
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-directory" / "inside").write_text("x")  # os.replace cannot replace a non-empty directory
    with pytest.raises(StorageError, match=f"^cannot write {tmp_path / 'a-directory'}: "):
        write_bytes(str(tmp_path / "a-directory"), b"data")
    with pytest.raises(StorageError, match=f"^cannot write {tmp_path / 'a-directory'}: "):
        atomic_write_local(tmp_path / "a-directory", b"data")
    assert temporaries(tmp_path) == []


def test_two_writers_of_one_file_use_their_own_temporaries(tmp_path, monkeypatch):
    """Writer 1 stops half-way; writer 2 writes the same file from start to end; writer 1 then
    finishes. With one shared temporary name, writer 2 would have moved writer 1's half file
    into place (or writer 1's move would fail)."""
    target = tmp_path / "t.parquet"
    real_write_table = pq.write_table
    halfway, go_on = threading.Event(), threading.Event()

    def write(table, where, **kwargs):
        real_write_table(table, where, **kwargs)
        if table.column("a")[0].as_py() == 1:  # writer 1
            halfway.set()
            assert go_on.wait(30)

    monkeypatch.setattr(pq, "write_table", write)
    errors = []
    writer_1 = threading.Thread(target=lambda: _capture(errors, write_table, str(target), pa.table({"a": [1]})))
    writer_1.start()
    assert halfway.wait(30)
    [pending] = temporaries(tmp_path)
    write_table(str(target), pa.table({"a": [2]}))  # writer 2, while writer 1 is half-way
    assert read_table(str(target)).column("a").to_pylist() == [2]
    assert temporaries(tmp_path) == [pending]  # writer 1's temporary untouched
    go_on.set()
    writer_1.join(30)
    assert errors == []
    assert read_table(str(target)).column("a").to_pylist() == [1]  # the last to finish wins, whole
    assert temporaries(tmp_path) == []


def _capture(errors, function, *args):
    try:
        function(*args)
    except BaseException as exc:  # noqa: BLE001 -- reported by the test's thread
        errors.append(exc)


def test_upload_dir_copies_every_file(tmp_path):
    source = tmp_path / "report"
    (source / "figures").mkdir(parents=True)
    (source / "report.md").write_text("# report")
    (source / "figures" / "a.png").write_bytes(b"\x89PNG")
    storage.upload_dir(source, str(tmp_path / "experiment"))
    assert (tmp_path / "experiment" / "report.md").read_text() == "# report"
    assert (tmp_path / "experiment" / "figures" / "a.png").read_bytes() == b"\x89PNG"
    storage.upload_dir(source, str(source))  # the same place: nothing to do
    assert temporaries(tmp_path) == []


# ---------------------------------------------------------------------- a full disk
def test_no_space_is_one_line_naming_the_path():
    # The two shapes of ENOSPC: an errno (local files, Python and pyarrow alike)
    # and pyarrow's text alone (its S3 and other remote errors).
    uri = "s3://bucket/exp/trials.parquet"
    assert str(storage._write_error(uri, OSError(errno.ENOSPC, "No space left on device"))) == \
        f"cannot write {uri}: no space left on device"
    assert str(storage._write_error(uri, OSError("Error writing bytes to file. Detail: [errno 28] "
                                                 "No space left on device"))) == \
        f"cannot write {uri}: no space left on device"
    other = storage._write_error(uri, OSError("When uploading part\nfor key 'x': AWS Error ACCESS_DENIED"))
    assert str(other) == f"cannot write {uri}: When uploading part for key 'x': AWS Error ACCESS_DENIED"


NO_SPACE_SCRIPT = r"""
import json, os, sys
import pyarrow as pa
from aalr_ray import storage

experiment = sys.argv[1] + "/exp"
result = {}
for kind in ("bytes", "table"):
    target = f"{experiment}/{kind}.out"
    storage.write_bytes(target, b"old")  # fits
    try:
        if kind == "bytes":
            storage.write_bytes(target, os.urandom(2 << 20))
        else:  # random bytes: Parquet cannot compress them below the 1 MiB the disk has
            storage.write_table(target, pa.table({"x": [os.urandom(1 << 20), os.urandom(1 << 20)]}))
        result[kind] = {"error": None}
    except storage.StorageError as exc:
        with open(target, "rb") as f:
            result[kind] = {"error": str(exc), "after": f.read().decode()}
result["files"] = sorted(os.listdir(experiment))
print("RESULT " + json.dumps(result))
"""


def _small_tmpfs_prefix(mount_point: Path) -> list[str] | None:
    """A command prefix that runs a command in its own mount namespace where a 1 MiB tmpfs is
    mounted on ``mount_point`` (gone with the namespace); None when this machine allows neither
    a privileged nor a user-namespace mount."""
    mount = ["sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"', str(mount_point)]
    for unshare in (["unshare", "--mount", "--propagation", "private"],
                    ["unshare", "--map-root-user", "--mount", "--propagation", "private"]):
        if shutil.which("unshare") and subprocess.run(unshare + mount + ["true"], capture_output=True,
                                                      timeout=30).returncode == 0:
            return unshare + mount
    return None


def test_a_full_disk_is_one_line_naming_the_path(tmp_path):
    """For real: a 1 MiB tmpfs (in a mount namespace of its own, so nothing leaks to this machine)."""
    small = tmp_path / "small"
    small.mkdir()
    prefix = _small_tmpfs_prefix(small)
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (neither root nor user namespaces); "
                    "test_no_space_is_one_line_naming_the_path covers the message")
    result = subprocess.run(prefix + [sys.executable, "-c", NO_SPACE_SCRIPT, str(small)], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")] or [None]
    assert line, result.stderr
    found = json.loads(line[len("RESULT "):])
    for kind in ("bytes", "table"):
        target = f"{small}/exp/{kind}.out"
        assert found[kind] == {"error": f"cannot write {target}: no space left on device", "after": "old"}
    assert found["files"] == ["bytes.out", "table.out"]  # no temporaries
    assert not any(small.iterdir())  # the tmpfs was never mounted here


# ====================================================================== local lock
HOLDER_SCRIPT = r"""
import subprocess, sys, time
from aalr_ray.storage import ExperimentLock

experiment, ttl_s, child = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "child"
with ExperimentLock(experiment, ttl_s=ttl_s, settle_s=0.2):
    # A child started like Ray starts its processes (fork and exec), told to keep our descriptors.
    pid = subprocess.Popen(["sleep", "120"], close_fds=False).pid if child else 0
    print(f"locked {pid}", flush=True)
    time.sleep(120)
"""


def start_holder(experiment: str, *, ttl_s: float = 60.0, child: bool = False, env=None):
    """A second driver: a process that takes the lock and sleeps. Returns (process, its child's pid)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, experiment, str(ttl_s),
                                "child" if child else "-"], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    line = process.stdout.readline()  # "" if it died first
    assert line.startswith("locked"), (line, process.poll())
    return process, int(line.split()[1])


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)  # no clean-up: like a crashed machine or an OOM kill
    process.wait(30)


@pytest.fixture
def holders():
    started = []
    yield started
    for process in started:
        if process.poll() is None:
            kill(process)


def test_local_lock_refuses_a_second_driver_and_takes_over_from_a_dead_one(tmp_path, holders):
    experiment = str(tmp_path / "results" / "grid")  # not there yet: the lock makes it
    process, _ = start_holder(experiment)
    holders.append(process)
    with pytest.raises(ExperimentLockedError) as refused:
        ExperimentLock(experiment).acquire()
    message = str(refused.value)
    assert "\n" not in message and isinstance(refused.value, StorageError)
    assert message.startswith(f"experiment {experiment} is in use by another aalr-ray driver "
                              f"(host {HOST}, pid {process.pid}, started 20"), message

    kill(process)
    with ExperimentLock(experiment) as lock:  # the kernel dropped the dead driver's flock
        held = json.loads(Path(experiment, LOCK_FILE).read_text())
        assert (held["host"], held["pid"]) == (HOST, os.getpid())
        with pytest.raises(ExperimentLockedError, match=f"pid {os.getpid()}"):  # not re-entrant
            ExperimentLock(experiment).acquire()
    assert lock._fd is None
    with ExperimentLock(experiment):  # released: free again
        pass


def test_local_lock_is_not_kept_by_the_drivers_children(tmp_path, holders):
    experiment = str(tmp_path / "grid")
    process, child = start_holder(experiment, child=True)
    holders.append(process)
    try:
        kill(process)
        os.kill(child, 0)  # the child lives on (as Ray's processes may, for a while)
        with ExperimentLock(experiment):
            pass
    finally:
        os.kill(child, signal.SIGKILL)


# ====================================================================== S3 lease
BUCKET = "aalr-lock-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3 protocol server (moto) on loopback with one bucket: (environment, boto3 client)."""
    with s3_server.moto_s3(tmp_path_factory.mktemp("aws"), BUCKET) as server:
        yield server


@pytest.fixture
def bucket(s3, monkeypatch, request):
    """(experiment URI, its key prefix, boto3 client, environment for subprocesses), a fresh prefix per test."""
    env, client = s3
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    prefix = f"{request.node.name}/grid"
    return f"s3://{BUCKET}/{prefix}", prefix, client, {**os.environ, **env}


def keys(client, prefix: str) -> list[str]:
    """The objects under a prefix, less the empty "dir/" markers pyarrow leaves when it deletes a key."""
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in listed if not (o["Key"].endswith("/") and o["Size"] == 0))


def lease(client, prefix: str) -> dict:
    return json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/{LOCK_FILE}")["Body"].read())


def test_s3_writes_are_atomic_too(bucket, monkeypatch):
    experiment, prefix, client, _ = bucket
    write_table(f"{experiment}/t.parquet", pa.table({"a": [1]}))
    write_bytes(f"{experiment}/b.json", b"{}")
    assert keys(client, prefix) == [f"{prefix}/b.json", f"{prefix}/t.parquet"]
    # pyarrow's S3 stream completes its upload even when the writer fails (half a file as an
    # object): it must land on the temporary, which is deleted, never on the target.
    with monkeypatch.context() as patched, \
            pytest.raises(StorageError, match=f"^cannot write {experiment}/t.parquet: "):
        patched.setattr(pq, "write_table", partial_then_fail(OSError(errno.EIO, "Input/output error")))
        write_table(f"{experiment}/t.parquet", pa.table({"a": [2]}))
    assert keys(client, prefix) == [f"{prefix}/b.json", f"{prefix}/t.parquet"]
    assert read_table(f"{experiment}/t.parquet").column("a").to_pylist() == [1]


def test_s3_lease_refused_while_fresh_taken_over_once_expired_deleted_on_release(bucket, holders, caplog):
    experiment, prefix, client, env = bucket
    process, _ = start_holder(experiment, ttl_s=2.0, env=env)
    holders.append(process)
    with pytest.raises(ExperimentLockedError) as refused:
        ExperimentLock(experiment, settle_s=0.2).acquire()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"experiment {experiment} is in use by another aalr-ray driver "
                              f"(host {HOST}, pid {process.pid}, started 20"), message
    assert "its lease renewed" in message

    kill(process)  # its lease stays, no longer renewed
    with pytest.raises(ExperimentLockedError, match=f"pid {process.pid}"):
        ExperimentLock(experiment, settle_s=0.2).acquire()  # still fresh
    time.sleep(2.5)
    with ExperimentLock(experiment, ttl_s=5.0, settle_s=0.2):
        held = lease(client, prefix)
        assert (held["host"], held["pid"], held["ttl_s"]) == (HOST, os.getpid(), 5.0)
    assert any("taking over the lock" in r.getMessage() and f"pid {process.pid}" in r.getMessage()
               for r in caplog.records)
    assert keys(client, prefix) == []  # released: the lease deleted, no temporaries


def test_s3_lease_renewal_keeps_it_alive(bucket):
    experiment, prefix, client, _ = bucket
    with ExperimentLock(experiment, ttl_s=1.5, settle_s=0.1):
        first = lease(client, prefix)["renewed"]
        time.sleep(3.5)  # more than two ttls
        assert lease(client, prefix)["renewed"] > first
        with pytest.raises(ExperimentLockedError, match=f"pid {os.getpid()}"):
            ExperimentLock(experiment, settle_s=0.1).acquire()
    assert keys(client, prefix) == []


def test_s3_lease_taken_over_is_noticed_and_not_deleted(bucket):
    experiment, prefix, client, _ = bucket
    lock = ExperimentLock(experiment, ttl_s=1.5, settle_s=0.1)
    lock.acquire()
    lock.check()  # ours
    other = {"owner": "another", "host": "elsewhere", "pid": 4242, "started": "2026-01-01T00:00:00+00:00",
             "renewed": time.time() + 60, "ttl_s": 60}
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{LOCK_FILE}", Body=json.dumps(other).encode())
    deadline = time.time() + 10
    while lock.lost is None and time.time() < deadline:
        time.sleep(0.1)
    assert lock.lost and "host elsewhere, pid 4242" in lock.lost and "\n" not in lock.lost
    with pytest.raises(ExperimentLockedError, match="pid 4242"):
        lock.check()
    lock.release()
    assert lease(client, prefix)["owner"] == "another"  # not ours: left alone


def test_s3_two_drivers_starting_together_one_wins(bucket):
    experiment, prefix, client, _ = bucket
    locks = [ExperimentLock(experiment, ttl_s=30, settle_s=1.0) for _ in range(2)]
    outcomes = [None, None]

    def take(i):
        try:
            locks[i].acquire()
            outcomes[i] = "held"
        except ExperimentLockedError:
            outcomes[i] = "refused"

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert sorted(outcomes) == ["held", "refused"]
        winner = locks[outcomes.index("held")]
        assert lease(client, prefix)["owner"] == winner._owner
    finally:
        for lock in locks:
            lock.release()
    assert keys(client, prefix) == []


def test_lock_on_unreachable_storage_is_one_line(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    lock = ExperimentLock(f"s3://{BUCKET}/nowhere", settle_s=0.0)
    monkeypatch.setattr(storage, "filesystem", lambda uri: (
        pafs.S3FileSystem(endpoint_override="127.0.0.1:9", scheme="http", connect_timeout=1, request_timeout=1,
                          retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1)),
        uri.split("://", 1)[1]))
    with pytest.raises(StorageError) as error:
        lock.acquire()
    assert not isinstance(error.value, ExperimentLockedError)
    assert str(error.value).startswith(f"cannot lock s3://{BUCKET}/nowhere/{LOCK_FILE}: ")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("value", ["abc", "0", "-3", "nan", "1e9", ""])
def test_a_bad_lock_ttl_from_the_environment_is_one_line_naming_it(tmp_path, monkeypatch, value):
    monkeypatch.setenv("AALR_RAY_LOCK_TTL_S", value)
    with pytest.raises(StorageError) as info:
        ExperimentLock(str(tmp_path / "experiment"))
    assert str(info.value) == f"AALR_RAY_LOCK_TTL_S={value!r}: give a number of seconds from 5 to 3600"


def test_the_lock_ttl_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AALR_RAY_LOCK_TTL_S", "12.5")
    assert ExperimentLock(str(tmp_path / "experiment")).ttl_s == 12.5
    monkeypatch.delenv("AALR_RAY_LOCK_TTL_S")
    assert ExperimentLock(str(tmp_path / "experiment")).ttl_s == 60.0


def test_a_trial_that_cannot_reach_s3_fails_in_seconds_with_one_line_naming_the_endpoint():
    """What a trial checks first on its node (aalr_ray.trainable.trial_snapshot_files): the
    filesystem Ray hands it, here one whose endpoint nothing listens on.

    Not end to end on a cluster: on one machine every node reaches the same loopback server.
    """
    fs = pafs.S3FileSystem(endpoint_override="127.0.0.1:9", scheme="http", access_key="testing",
                           secret_key="testing", region="us-east-1")
    started = time.monotonic()
    with pytest.raises(StorageError) as error:
        storage.check_writable(fs, f"{BUCKET}/exp/trial_1", "the trial storage on node 10.0.0.7")
    message = str(error.value)
    assert message.startswith("the trial storage on node 10.0.0.7 is not usable (endpoint http://127.0.0.1:9): ")
    assert "\n" not in message and time.monotonic() - started < 20
