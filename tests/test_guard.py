"""The guard of Tune's state files: whole sets saved, torn files detected and put back (no Ray run)."""

import json
import pickle

import pytest

from aalr_ray import guard
from aalr_ray.storage import StorageError

STATE = "experiment_state-2026-01-01_00-00-00.json"
SEARCH = "basic-variant-state-2026-01-01_00-00-00.json"  # Tune writes this one as a pickle


def write_state(experiment, generation):
    (experiment / STATE).write_text(json.dumps({"trial_data": list(range(generation))}))
    (experiment / SEARCH).write_bytes(pickle.dumps({"counter": generation}))


def test_torn_json_and_torn_pickles_are_told_from_whole_ones(tmp_path):
    write_state(tmp_path, 3)
    assert guard.torn_state_files(tmp_path) == []
    for name in (STATE, SEARCH):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    assert guard.torn_state_files(tmp_path) == sorted([STATE, SEARCH])
    (tmp_path / SEARCH).write_bytes(b"")
    assert SEARCH in guard.torn_state_files(tmp_path)


def test_repair_puts_back_the_last_whole_set_together(tmp_path):
    seen = {}
    write_state(tmp_path, 2)
    assert guard.backup(tmp_path, seen)
    assert not guard.backup(tmp_path, seen)  # nothing changed: nothing written
    write_state(tmp_path, 5)
    (tmp_path / STATE).write_text('{"trial_data": [0, 1')  # torn mid-copy by a full disk
    assert not guard.backup(tmp_path, seen)  # a set with a torn file is never saved

    assert guard.repair(tmp_path) == sorted([STATE, SEARCH])
    # Both files come from the same generation, the search state too, although it was whole:
    # a newer search state beside an older experiment state would lose trials.
    assert json.loads((tmp_path / STATE).read_text()) == {"trial_data": [0, 1]}
    assert pickle.loads((tmp_path / SEARCH).read_bytes()) == {"counter": 2}
    assert guard.repair(tmp_path) == []  # whole again: nothing to do


def test_on_a_full_disk_repair_removes_torn_files_and_a_later_repair_restores_them(tmp_path, monkeypatch):
    write_state(tmp_path, 2)
    guard.backup(tmp_path)
    (tmp_path / STATE).write_text('{"trial')

    def full(path, data):
        raise StorageError(f"cannot write {path}: no space left on device")

    monkeypatch.setattr(guard, "atomic_write_local", full)
    assert guard.repair(tmp_path) == []
    assert not (tmp_path / STATE).exists() and guard.torn_state_files(tmp_path) == []
    monkeypatch.undo()
    assert guard.repair(tmp_path) == sorted([STATE, SEARCH])
    assert json.loads((tmp_path / STATE).read_text()) == {"trial_data": [0, 1]}


def test_object_storage_is_left_alone():
    assert guard.repair("s3://bucket/experiment") == []
    assert guard.torn_state_files("s3://bucket/experiment") == []


@pytest.mark.parametrize("text", ["OSError: [Errno 28] No space left on device", "errno 28"])
def test_a_full_disk_failure_ends_the_run_with_one_line(tmp_path, text):
    class Trial:
        error_file = str(tmp_path / "error.txt")

        def __str__(self):
            return "aalr-mlp-digits-s0"

    (tmp_path / "error.txt").write_text(f"Failure # 1\n{text}\n")
    callback = guard.StateGuard(str(tmp_path / "exp"))
    with pytest.raises(guard.DiskFullError):
        callback.on_trial_error(0, [], Trial())
    message = guard.full_disk_message(str(tmp_path / "exp"))
    assert "no space left on device" in message and "aalr-mlp-digits-s0" in message and "\n" not in message
