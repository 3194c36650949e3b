"""A trial's checkpoint files in storage: small per-epoch checkpoints, frozen snapshots written once.

AALR keeps two copies of the weights and optimizer state besides the live
ones: theta_0 during phase 1 (``initial``) and the best point of phase 2
(``best``). Both change rarely: ``initial`` never, ``best`` at SAVE_BEST
only. Carrying them inside every epoch's ``run.pt`` would upload up to three
times the model and optimizer state each epoch (a ResNet-18 checkpoint grows
from 89 MB, model and optimizer, to 134 MB in phase 1); on a cluster every byte goes to object storage.

So a checkpoint directory (Tune's ``checkpoint_NNNNNN``) holds the live
state, with each snapshot replaced by a reference ``{"snapshot_file": NAME}``,
and the snapshots live beside the checkpoint directories::

    <trial dir>/checkpoint_000007/run.pt          model, optimizer, AALR core, rows ...
    <trial dir>/checkpoint_000007/epochs.jsonl
    <trial dir>/checkpoint_000007/snapshots.json   {"snapshots": ["3f0c...e1.pt", ...]}
    <trial dir>/snapshots/3f0c...e1.pt            written at SAVE_BEST, read on resume

A snapshot file is named by the SHA-256 of its bytes, written atomically
once, and deleted only when no checkpoint directory in storage names it
(each has a small ``snapshots.json`` saying which it names;
:meth:`SnapshotFiles.committed`). A checkpoint is found with
its snapshots from its own path: ``<checkpoint>/../snapshots``, the same
rule for a Tune trial, a Ray Train run inside one, local disk and S3.

A ``run.pt`` that holds its snapshots inline (the layout of aalr-ray before
this module, and :meth:`TrainingRun.state_dict` as is) still loads.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pyarrow.fs as pafs
import torch

from . import storage as store
from .errors import one_line

__all__ = ["SNAPSHOT_DIR", "INDEX_FILE", "SNAPSHOT_KEYS", "SnapshotFiles", "SnapshotFileError",
           "snapshot_dir_of", "referenced_snapshots", "index_of", "load_snapshot"]

SNAPSHOT_DIR = "snapshots"
INDEX_FILE = "snapshots.json"  # in each checkpoint directory: the snapshot files its run.pt names
# The frozen copies of AALRController.state_dict(), under state["method"]["controller"].
SNAPSHOT_KEYS = ("initial", "best")
_REFERENCE = "snapshot_file"


class SnapshotFileError(RuntimeError):
    """A snapshot file a checkpoint names is missing or unreadable; the message names the file."""


def snapshot_dir_of(checkpoint_path: str) -> str:
    """Where the snapshots of the checkpoint directory ``checkpoint_path`` live (on its filesystem)."""
    return f"{checkpoint_path.rstrip('/').rsplit('/', 1)[0]}/{SNAPSHOT_DIR}"


def _controller(state: dict) -> dict | None:
    method = state.get("method")
    controller = method.get("controller") if isinstance(method, dict) else None
    return controller if isinstance(controller, dict) else None


def _is_reference(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {_REFERENCE}


def referenced_snapshots(state: dict) -> set[str]:
    """The snapshot file names a checkpoint's state refers to."""
    controller = _controller(state) or {}
    return {controller[k][_REFERENCE] for k in SNAPSHOT_KEYS if _is_reference(controller.get(k))}


def index_of(state: dict) -> bytes:
    """The :data:`INDEX_FILE` of a checkpoint whose state is ``state``."""
    return json.dumps({"snapshots": sorted(referenced_snapshots(state))}).encode()


def _serialize(snapshot: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(snapshot, buffer)
    return buffer.getvalue()


class SnapshotFiles:
    """The snapshot files of one run, in ``directory`` on ``fs`` (``<trial dir>/snapshots``).

    The writer calls :meth:`split` on the state it checkpoints and writes the
    result with :data:`INDEX_FILE` (:func:`index_of`) into the checkpoint,
    reports it, then calls :meth:`committed`; on resume, :meth:`join` brings
    the snapshots back. A snapshot is uploaded once: a later checkpoint that
    holds the same object (the controller keeps its snapshot until the next
    SAVE_BEST) only refers to the file.
    """

    def __init__(self, fs: pafs.FileSystem, directory: str):
        self.fs, self.directory = fs, directory.rstrip("/")
        # id(snapshot) -> (snapshot, file name) for snapshots known to be in self.directory.
        # The snapshot itself is held so that its id cannot be reused by another object.
        self._files: dict[int, tuple[dict, str]] = {}
        self._pending: set[str] = set()  # named by split() for a checkpoint not committed yet
        self.bytes_written = 0  # for the checkpoint-traffic benchmark

    # ------------------------------------------------------------ writing
    def split(self, state: dict) -> dict:
        """``state`` with each snapshot replaced by a reference to its file (written here if new)."""
        controller = _controller(state)
        if controller is None:
            return state
        replaced = dict(controller)
        for key in SNAPSHOT_KEYS:
            snapshot = controller.get(key)
            if isinstance(snapshot, dict) and not _is_reference(snapshot):
                replaced[key] = {_REFERENCE: self._put(snapshot)}
        return {**state, "method": {**state["method"], "controller": replaced}}

    def _put(self, snapshot: dict) -> str:
        known = self._files.get(id(snapshot))
        if known is not None and known[0] is snapshot:
            name = known[1]
        else:
            data = _serialize(snapshot)
            name = hashlib.sha256(data).hexdigest()[:32] + ".pt"
            path = f"{self.directory}/{name}"
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                store.write_file(self.fs, path, data)
                self.bytes_written += len(data)
            self._files[id(snapshot)] = (snapshot, name)
        self._pending.add(name)
        return name

    def committed(self, state: dict) -> None:
        """``state`` (as :meth:`split` returned it) is reported: delete the snapshot files no checkpoint names.

        "No checkpoint" means none of the checkpoint directories still in
        storage beside the snapshots, as their index files say: whatever Ray
        keeps, prunes or has not registered yet (Ray Train can restore a
        checkpoint a few reports older than the newest), a file goes only
        when nothing could restore from it. While a checkpoint directory
        lacks its index file (written by an older aalr-ray, or cut short by
        a crash), nothing is deleted.
        """
        latest = referenced_snapshots(state)
        self._pending -= latest
        # Only these snapshots can be met again (the controller holds them).
        self._files = {k: v for k, v in self._files.items() if v[1] in latest | self._pending}
        candidates = self._listed() - latest - self._pending
        named = self._named_by_checkpoints() if candidates else None  # most epochs: nothing to read
        if named is None:
            return
        for name in sorted(candidates - named):
            try:
                self.fs.delete_file(f"{self.directory}/{name}")
            except FileNotFoundError:
                pass

    def _named_by_checkpoints(self) -> set[str] | None:
        """The snapshot files the checkpoints beside them name; None if one cannot say."""
        parent = self.directory.rsplit("/", 1)[0]
        named: set[str] = set()
        for info in self.fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
            if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
                continue
            try:
                index = json.loads(store.read_file(self.fs, f"{info.path}/{INDEX_FILE}"))
            except FileNotFoundError:
                if self.fs.get_file_info(info.path).type == pafs.FileType.NotFound:
                    continue  # pruned by Ray meanwhile
                return None
            named.update(index["snapshots"])
        return named

    def _listed(self) -> set[str]:
        selector = pafs.FileSelector(self.directory, allow_not_found=True)
        return {info.base_name for info in self.fs.get_file_info(selector)
                if info.type == pafs.FileType.File and info.base_name.endswith(".pt")
                and not info.base_name.startswith(".")}

    # ------------------------------------------------------------ reading
    def join(self, state: dict, checkpoint_path: str, checkpoint_fs: pafs.FileSystem | None = None) -> dict:
        """``state`` with every reference replaced by its snapshot, read from the checkpoint's snapshots.

        Raises SnapshotFileError naming the file when one is gone.
        """
        controller = _controller(state)
        if controller is None or not referenced_snapshots(state):
            return state
        fs = checkpoint_fs or self.fs
        directory = snapshot_dir_of(checkpoint_path)
        # A checkpoint of this run (not another trial's, as PBT may hand over): its files are ours.
        mine = directory == self.directory and fs.type_name == self.fs.type_name
        restored = dict(controller)
        for key in SNAPSHOT_KEYS:
            if _is_reference(controller.get(key)):
                name = controller[key][_REFERENCE]
                restored[key] = snapshot = load_snapshot(fs, f"{directory}/{name}")
                if mine:
                    self._files[id(snapshot)] = (snapshot, name)
        return {**state, "method": {**state["method"], "controller": restored}}


def load_snapshot(fs: pafs.FileSystem, path: str) -> dict:
    """One snapshot file (``weights_only``); SnapshotFileError naming it when it is absent or unreadable."""
    try:
        data = store.read_file(fs, path)
    except FileNotFoundError:
        raise SnapshotFileError(f"snapshot file {store.uri_of(fs, path)} is missing: the checkpoint refers to it "
                                "(deleted by hand?); this trial cannot resume") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise SnapshotFileError(f"snapshot file {store.uri_of(fs, path)} cannot be loaded: "
                                f"{type(exc).__name__}: {one_line(exc, 200)}") from None
