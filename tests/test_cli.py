"""The `aalr-ray train` command: output, help, and every bad-input path."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aalr_ray.cli import main
from aalr_ray.data import dataset_names
from aalr_ray.methods import method_names
from aalr_ray.models import model_names


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "aalr_ray.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_train_writes_one_json_row_per_epoch(tmp_path):
    out = tmp_path / "run.jsonl"
    result = cli("train", "--model", "mnist1d-cnn", "--dataset", "mnist1d", "--method", "aalr", "--epochs", "3",
                 "--data-dir", str(tmp_path / "data"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert {"lr", "train_loss", "test_loss", "test_acc", "epoch_s", "phase", "patience", "best_loss",
            "action"} <= rows[0].keys()
    progress = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(progress) == 3 and "final test_acc" in result.stdout


def test_help_lists_every_choice():
    text = cli("train", "--help").stdout
    for name in model_names() + dataset_names() + method_names():
        assert name in text


BASE = ["train", "--model", "mnist1d-cnn", "--dataset", "mnist1d", "--method", "aalr", "--epochs", "2"]


def with_arg(flag, value):
    args = list(BASE)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


@pytest.mark.parametrize("args, fragments", [
    (with_arg("--model", "resnet9000"), ["resnet9000", "mnist1d-cnn", "wrn-28-10"]),
    (with_arg("--dataset", "imagenet"), ["imagenet", "cifar10", "mnist1d"]),
    (with_arg("--method", "sgd-magic"), ["sgd-magic", "aalr", "prodigy"]),
    (with_arg("--augmentation", "mixup"), ["mixup", "cutout"]),
    (with_arg("--augmentation", "cutout"), ["cutout", "mnist1d", "none"]),
    (with_arg("--epochs", "0"), ["--epochs", "0"]),
    (with_arg("--batch-size", "-4"), ["--batch-size", "-4"]),
    (with_arg("--model", "resnet18"), ["resnet18", "40"]),
    (with_arg("--dataset", "cifar10"), ["cifar10", "cifar-10"]),
    (with_arg("--option", "nonsense=1"), ["nonsense", "lr"]),
])
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, capsys, args, fragments):
    out = tmp_path / "run.jsonl"
    assert main([*args, "--data-dir", str(tmp_path / "empty"), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aalr-ray: error:"), lines
    for fragment in fragments:
        assert fragment in lines[0]
    assert not out.exists()


def test_missing_output_directory_is_reported(tmp_path):
    # Through the installed entry point's module: no traceback, exit status 2.
    result = cli(*BASE, "--out", str(tmp_path / "nowhere" / "run.jsonl"))
    assert result.returncode == 2 and "nowhere" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


# ------------------------------------------------- issue 12: every bad input refused cleanly
def one_error_line(capsys, count=1) -> list[str]:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == count and all(line.startswith("aalr-ray: error:") for line in lines), lines
    return lines


GOOD_GRID = "name: cli-bad\nepochs: 2\nseeds: 1\ndatasets: [mnist1d]\nmodels: [mnist1d-cnn]\nmethods: [aalr]\n"


@pytest.mark.parametrize("content, count, fragment", [
    (GOOD_GRID.replace("cli-bad", "'..'"), 1, "name: expected one path component"),
    (GOOD_GRID + "resources: {cpu: 1, gpu: .nan}\n", 1, "resources.gpu: expected a finite number"),
    (GOOD_GRID + "overrides: [{match: {method: aalr}, set: {weight_decay: -5}}]\n", 1,
     "overrides[0].set.weight_decay"),
    ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
     + GOOD_GRID, 1, "anchors are not allowed"),
    (GOOD_GRID + "seeds: 2\n", 1, "duplicate key 'seeds' at line 7"),
    ("name: x\nepochs: " + "[" * 3000 + "]" * 3000, 1, "nest"),
    (GOOD_GRID.encode() + b"\xff\xfe", 1, "not UTF-8"),
    (GOOD_GRID.replace("mnist1d]", "mnist1d, cli_raises_on_import:make]"), 1, "RuntimeError: no data here"),
    ("name: '..'\nepochs: 0\nmethods: [magic]\n", 5, "datasets: missing"),
    (GOOD_GRID + "device: cpu\nprecision: fp16\n", 1, "precision: 'fp16' needs a CUDA GPU (its GradScaler)"),
    (GOOD_GRID + "device: cuda\nchannels_last: maybe\n", 2, "device: 'cuda' needs 1 GPU per trial"),
])
def test_grid_refuses_bad_files_before_ray_and_writes_nothing(tmp_path, capsys, monkeypatch, content, count,
                                                               fragment):
    (tmp_path / "cli_raises_on_import.py").write_text("raise RuntimeError('no data here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cli_raises_on_import", raising=False)
    job = tmp_path / "job.yaml"
    job.write_bytes(content if isinstance(content, bytes) else content.encode())
    storage = tmp_path / "results" / "storage"
    assert main(["grid", str(job), "--storage", str(storage)]) == 2
    lines = one_error_line(capsys, count)
    assert any(fragment in line for line in lines), lines
    assert not (tmp_path / "results").exists()  # neither the storage, its parent nor the experiment
    import ray

    assert not ray.is_initialized()


def test_grid_file_that_is_a_directory_or_missing(tmp_path, capsys):
    for job, fragment in ((tmp_path, "is a directory"), (tmp_path / "nope.yaml", "no such grid file")):
        assert main(["grid", str(job), "--storage", str(tmp_path / "results")]) == 2
        assert fragment in one_error_line(capsys)[0]
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--model", "mlp"], "the following arguments are required: --dataset, --epochs"),
    (with_arg("--epochs", "two"), "argument --epochs: invalid int value: 'two'"),
    ([*BASE, "--colour", "red"], "unrecognized arguments: --colour red"),
    (["fit"], "argument command: invalid choice: 'fit' (choose from 'train', 'grid', 'report')"),
    (with_arg("--seed", "-1"), "--seed must be an integer in 0..2**63-1, got -1"),
    (with_arg("--weight-decay", "inf"), "--weight-decay must be a finite number >= 0, got inf"),
    (with_arg("--threads", "-2"), "--threads must be an integer in 0..1024"),
    (with_arg("--device", "gpu"), "unknown device 'gpu'; choose from: auto, cpu, cuda, cuda:N, mps"),
    (with_arg("--device", "cuda:99"), "device 'cuda:99' is not on this machine"),
    (with_arg("--option", "lr=-0.1"), "--option lr: expected a finite number > 0, got -0.1"),
    (with_arg("--option", "window=wide"), "--option window: expected one of: text, pseudocode"),
    (with_arg("--option", "final=1"), "--option final: expected one of: last, best, got 1"),
])
def test_bad_arguments_are_one_line_before_any_data_loads(tmp_path, capsys, argv, fragment):
    data = tmp_path / "data"
    out = tmp_path / "run.jsonl"
    assert main([*argv, "--data-dir", str(data), "--out", str(out)]) == 2
    assert fragment in one_error_line(capsys)[0]
    assert not data.exists() and not out.exists()


def test_out_that_exists_is_a_directory_or_cannot_be_written(tmp_path, capsys):
    import os

    existing = tmp_path / "old.jsonl"
    existing.write_text('{"epoch": 1}\n')
    data = tmp_path / "data"
    assert main([*BASE, "--data-dir", str(data), "--out", str(existing)]) == 2
    assert "already exists; remove it or pick another path" in one_error_line(capsys)[0]
    assert existing.read_text() == '{"epoch": 1}\n'
    assert main([*BASE, "--data-dir", str(data), "--out", str(tmp_path)]) == 2
    assert "is a directory" in one_error_line(capsys)[0]
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        target = locked / "run.jsonl"
    else:  # root writes into a mode-555 directory; sysfs refuses even root
        target = Path("/sys/aalr-ray-test.jsonl")
        if os.access("/sys", os.W_OK) and not target.parent.is_dir():
            pytest.skip("no read-only location to try")
    assert main([*BASE, "--data-dir", str(data), "--out", str(target)]) == 2
    assert "cannot write --out" in one_error_line(capsys)[0]
    assert not data.exists()  # refused before the data loads


def test_out_is_removed_when_the_run_fails_on_bad_input(tmp_path, capsys, monkeypatch):
    (tmp_path / "cli_bad_factory.py").write_text("def make():\n    raise ValueError('no such split')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run.jsonl"
    assert main([*with_arg("--dataset", "cli_bad_factory:make"), "--out", str(out)]) == 2
    assert "no such split" in one_error_line(capsys)[0]
    assert not out.exists()


def experiment_dir(tmp_path) -> Path:
    """The two Parquet files of a finished two-trial grid."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    experiment = tmp_path / "exp"
    experiment.mkdir()
    trials = [{"trial_id": f"t{i}", "dataset": "mnist1d", "model": "mnist1d-cnn", "method": m, "training": "natural",
               "status": "TERMINATED", "seed": 0, "peak_test_acc": 0.5, "final_test_acc": 0.4}
              for i, m in enumerate(("aalr", "step"))]
    epochs = [{"trial_id": t["trial_id"], "epoch": e, "lr": 0.1, "train_loss": 1.0, "test_acc": 0.5}
              for t in trials for e in (1, 2)]
    pq.write_table(pa.Table.from_pylist(trials), experiment / "trials.parquet")
    pq.write_table(pa.Table.from_pylist(epochs), experiment / "epochs.parquet")
    return experiment


@pytest.mark.parametrize("name, spoil, fragment", [
    ("trials.parquet", lambda p: p.write_bytes(b""), "trials.parquet: not a readable Parquet table"),
    ("trials.parquet", lambda p: p.write_bytes(p.read_bytes()[:100]), "trials.parquet: not a readable Parquet"),
    ("epochs.parquet", lambda p: p.write_bytes(p.read_bytes()[:-20]), "epochs.parquet: not a readable Parquet"),
    ("epochs.parquet", lambda p: p.write_bytes(b"PAR1" + bytes(200) + b"PAR1"), "epochs.parquet: not a readable"),
    ("epochs.parquet", lambda p: p.unlink(), "epochs.parquet: no such file"),
    ("trials.parquet", "drop:model", "trials.parquet: missing column(s) model"),
    ("epochs.parquet", "drop:lr", "epochs.parquet: missing column(s) lr"),
])
def test_report_refuses_broken_tables_in_one_line_naming_the_file(tmp_path, capsys, name, spoil, fragment):
    import pyarrow.parquet as pq

    experiment = experiment_dir(tmp_path)
    path = experiment / name
    if isinstance(spoil, str):
        table = pq.read_table(path)
        pq.write_table(table.drop([spoil.split(":")[1]]), path)
    else:
        spoil(path)
    before = sorted(p.name for p in experiment.iterdir())
    assert main(["report", str(experiment)]) == 2
    line = one_error_line(capsys)[0]
    assert fragment in line and str(experiment) in line
    assert sorted(p.name for p in experiment.iterdir()) == before  # no report.md, no figures


def test_report_of_a_valid_directory_still_works(tmp_path, capsys):
    experiment = experiment_dir(tmp_path)
    assert main(["report", str(experiment)]) == 0
    assert (experiment / "report.md").exists() and "mnist1d-cnn" in capsys.readouterr().out


def test_no_command_is_one_line(capsys):
    assert main([]) == 2
    assert "the following arguments are required: command" in one_error_line(capsys)[0]


def test_report_takes_trials_that_never_started(tmp_path, capsys):
    # An interrupted grid: a trial Tune never started has no trial_id and no accuracies.
    import pyarrow as pa
    import pyarrow.parquet as pq

    experiment = experiment_dir(tmp_path)
    trials = pq.read_table(experiment / "trials.parquet").to_pylist()
    trials.append({**trials[0], "trial_id": None, "status": "PENDING", "peak_test_acc": None,
                   "final_test_acc": None, "seed": 1})
    pq.write_table(pa.Table.from_pylist(trials), experiment / "trials.parquet")
    assert main(["report", str(experiment)]) == 0, capsys.readouterr().err
    assert (experiment / "report.md").exists()


# ------------------------------------------------- issue 18: precision and devices
import torch  # noqa: E402

from aalr_ray.train import cpu_bf16_autocast  # noqa: E402

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a CUDA GPU")


@pytest.mark.parametrize("argv, fragment", [
    (with_arg("--precision", "fp8"), "argument --precision: invalid choice: 'fp8' (choose from 'auto', 'fp32'"),
    (with_arg("--channels-last", "yes"), "argument --channels-last: invalid choice: 'yes'"),
    (with_arg("--snapshot-device", "gpu"), "argument --snapshot-device: invalid choice: 'gpu'"),
    pytest.param(with_arg("--precision", "fp16"), "precision 'fp16' cannot run on device cpu (fp16 needs a CUDA "
                 "GPU, for its GradScaler); choose from: auto, fp32", marks=no_cuda),
    pytest.param(with_arg("--device", "cuda"), "device 'cuda' is not on this machine (0 CUDA device(s)); "
                 "choose from: auto, cpu", marks=no_cuda),
])
def test_precision_and_device_refusals_are_one_line_and_write_nothing(tmp_path, capsys, argv, fragment):
    data, results = tmp_path / "data", tmp_path / "results"
    results.mkdir()
    out = results / "run.jsonl"
    assert main([*argv, "--data-dir", str(data), "--out", str(out)]) == 2
    assert fragment in one_error_line(capsys)[0]
    assert not data.exists() and list(results.iterdir()) == []


@pytest.mark.skipif(not cpu_bf16_autocast(), reason="cpu_bf16_autocast() is False: no bf16 autocast on this CPU")
def test_train_takes_the_precision_flags(tmp_path):
    out = tmp_path / "run.jsonl"
    result = cli("train", "--model", "small-cnn", "--dataset", "digits", "--epochs", "1", "--batch-size", "256",
                 "--device", "cpu", "--precision", "bf16", "--channels-last", "on", "--snapshot-device", "cpu",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["epoch"] for line in out.read_text().splitlines()] == [1]
