"""The `aalr-ray train` command: output, help, and every bad-input path."""

import json
import subprocess
import sys

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
