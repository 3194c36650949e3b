"""The checkpoint layout: AALR's snapshots in files of their own, uploaded once, deleted when unreferenced.

States are built by construction (a controller state holding snapshot dicts),
so each rule is forced, not hoped for; one test measures a real run's
checkpoint against the goal of at most 1.1 x (model + optimizer state).
"""

import io
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from aalr_ray.checkpoints import (INDEX_FILE, SNAPSHOT_DIR, SnapshotFileError, SnapshotFiles, index_of,
                                  referenced_snapshots)
from aalr_ray.train import RunConfig, TrainingRun


def snapshot(value: float) -> dict:
    return {"model": {"w": torch.full((64,), value)}, "optimizer": {"state": {}, "param_groups": [{"lr": value}]}}


def state(initial=None, best=None, epoch=1) -> dict:
    return {"epoch": epoch, "model": {"w": torch.zeros(64)},
            "method": {"optimizer": {}, "controller": {"core": {"epoch": epoch}, "initial": initial, "best": best}}}


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*.pt")} if directory.exists() else set()


@pytest.fixture
def snapshot_dir(tmp_path):
    return tmp_path / "trial" / SNAPSHOT_DIR


def store(directory: Path) -> SnapshotFiles:
    return SnapshotFiles(pafs.LocalFileSystem(), str(directory))


def checkpoint_path(directory: Path, index: int) -> str:
    return str(directory.parent / f"checkpoint_{index:06d}")


class TestWriting:
    def test_an_unchanged_snapshot_is_written_once_and_referenced_after(self, snapshot_dir):
        snapshots, initial = store(snapshot_dir), snapshot(0.5)
        first = snapshots.split(state(initial=initial, epoch=1))
        written = snapshots.bytes_written
        second = snapshots.split(state(initial=initial, epoch=2))
        assert written > 0 and snapshots.bytes_written == written  # the same object: no second upload
        assert referenced_snapshots(first) == referenced_snapshots(second) == files(snapshot_dir)
        assert first["method"]["controller"]["best"] is None  # nothing to refer to

    def test_the_checkpoint_itself_no_longer_carries_the_snapshots(self, snapshot_dir):
        full = state(initial=snapshot(0.5), best=snapshot(1.5))
        split = store(snapshot_dir).split(full)
        sizes = {}
        for name, value in (("full", full), ("split", split)):
            buffer = io.BytesIO()
            torch.save(value, buffer)
            sizes[name] = len(buffer.getvalue())
        assert sizes["split"] < sizes["full"] - 2 * 64 * 4  # both 64-float snapshots are out
        assert full["method"]["controller"]["initial"]["model"]["w"][0] == 0.5  # the input is not changed

    def test_a_new_best_is_a_new_file(self, snapshot_dir):
        snapshots = store(snapshot_dir)
        names = [referenced_snapshots(snapshots.split(state(best=snapshot(v)))) for v in (1.0, 2.0)]
        assert names[0] != names[1] and files(snapshot_dir) == names[0] | names[1]


class TestReading:
    def test_join_brings_back_every_snapshot_bit_for_bit(self, snapshot_dir):
        original = state(initial=snapshot(0.25), best=snapshot(0.75))
        split = store(snapshot_dir).split(original)
        joined = store(snapshot_dir).join(split, checkpoint_path(snapshot_dir, 3))
        for key in ("initial", "best"):
            assert torch.equal(joined["method"]["controller"][key]["model"]["w"],
                               original["method"]["controller"][key]["model"]["w"])
            assert joined["method"]["controller"][key]["optimizer"] == original["method"]["controller"][key]["optimizer"]

    def test_a_resumed_run_does_not_upload_what_it_loaded(self, snapshot_dir):
        split = store(snapshot_dir).split(state(initial=snapshot(0.25)))
        resumed = store(snapshot_dir)
        joined = resumed.join(split, checkpoint_path(snapshot_dir, 0))
        again = resumed.split(joined)
        assert resumed.bytes_written == 0 and referenced_snapshots(again) == referenced_snapshots(split)

    def test_a_state_with_inline_snapshots_loads_as_before(self, snapshot_dir):
        inline = state(initial=snapshot(0.25))
        assert store(snapshot_dir).join(inline, checkpoint_path(snapshot_dir, 0)) is inline

    def test_a_missing_snapshot_file_is_an_error_naming_it(self, snapshot_dir):
        split = store(snapshot_dir).split(state(best=snapshot(1.0)))
        [name] = referenced_snapshots(split)
        (snapshot_dir / name).unlink()
        with pytest.raises(SnapshotFileError, match=f"snapshot file {snapshot_dir / name} is missing"):
            store(snapshot_dir).join(split, checkpoint_path(snapshot_dir, 0))


def report(snapshots: SnapshotFiles, directory: Path, index: int, split: dict) -> None:
    """What the trainable does with a split state: a checkpoint directory holding its index, then committed()."""
    checkpoint = Path(checkpoint_path(directory, index))
    checkpoint.mkdir(parents=True)
    (checkpoint / INDEX_FILE).write_bytes(index_of(split))
    snapshots.committed(split)


class TestDeleting:
    def test_a_file_goes_once_no_checkpoint_in_storage_names_it(self, snapshot_dir):
        snapshots, old, new = store(snapshot_dir), snapshot(1.0), snapshot(2.0)
        first = snapshots.split(state(best=old))
        report(snapshots, snapshot_dir, 0, first)
        report(snapshots, snapshot_dir, 1, snapshots.split(state(best=new)))
        [old_name] = referenced_snapshots(first)
        assert old_name in files(snapshot_dir)  # checkpoint 0 is still there and names it
        shutil.rmtree(checkpoint_path(snapshot_dir, 0))  # pruned by Ray (however late)
        report(snapshots, snapshot_dir, 2, snapshots.split(state(best=new)))
        assert old_name not in files(snapshot_dir) and len(files(snapshot_dir)) == 1

    def test_a_split_not_reported_yet_keeps_its_files(self, snapshot_dir):
        snapshots = store(snapshot_dir)
        first = snapshots.split(state(best=snapshot(1.0)))
        upcoming = snapshots.split(state(best=snapshot(2.0)))
        report(snapshots, snapshot_dir, 0, first)
        assert referenced_snapshots(upcoming) <= files(snapshot_dir)

    def test_nothing_is_deleted_while_a_checkpoint_has_no_index(self, snapshot_dir):
        [orphan] = referenced_snapshots(store(snapshot_dir).split(state(best=snapshot(9.0))))  # an earlier attempt's
        snapshots = store(snapshot_dir)
        Path(checkpoint_path(snapshot_dir, 0)).mkdir(parents=True)  # an older aalr-ray's, or cut short
        report(snapshots, snapshot_dir, 1, snapshots.split(state(best=snapshot(1.0))))
        assert orphan in files(snapshot_dir)
        shutil.rmtree(checkpoint_path(snapshot_dir, 0))
        report(snapshots, snapshot_dir, 2, snapshots.split(state(best=snapshot(1.0))))
        assert orphan not in files(snapshot_dir)


def test_a_real_checkpoint_is_within_a_tenth_of_model_and_optimizer(data_dir, tmp_path):
    """The goal for epochs without a SAVE_BEST: run.pt <= 1.1 x (model + optimizer state)."""
    run = TrainingRun(RunConfig(model="mnist1d-cnn", dataset="mnist1d", method="aalr", epochs=3, seed=0,
                                data_dir=data_dir))
    snapshots = store(tmp_path / SNAPSHOT_DIR)
    run.train_one_epoch()
    snapshots.split(run.state_dict())
    run.train_one_epoch()
    sizes = {}
    for name, value in (("checkpoint", snapshots.split(run.state_dict())),
                        ("live", {"model": run.model.state_dict(), "optimizer": run.method.optimizer.state_dict()})):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        sizes[name] = len(buffer.getvalue())
    assert sizes["checkpoint"] <= 1.1 * sizes["live"], sizes
    # Phase 1 (patience 10) still runs: theta_0 was held, and is referenced, not carried.
    assert run.method.controller.phase == 1 and referenced_snapshots(snapshots.split(run.state_dict()))


def test_an_unreadable_snapshot_file_is_an_error_naming_it(snapshot_dir):
    split = store(snapshot_dir).split(state(best=snapshot(1.0)))
    [name] = referenced_snapshots(split)
    (snapshot_dir / name).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(SnapshotFileError, match=f"snapshot file {snapshot_dir / name} cannot be loaded: "):
        store(snapshot_dir).join(split, checkpoint_path(snapshot_dir, 0))
