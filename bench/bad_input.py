"""Every bad input we know, through the real command line, judged for a clean refusal.

    python bench/bad_input.py          # prints tried/clean per kind, and every case that was not clean

Each case runs ``aalr_ray.cli.main([...])`` in this process and is *clean* when
the command exits with status 2; stderr is exactly one line per problem, each
starting with ``aalr-ray: error:`` and holding the expected fragments (the bad
value or key path); there is no traceback; nothing new appears in the case's
directory (the grid's ``--storage`` and its parent, the train ``--out``
directory, the experiment directory of a report); an existing file is left as
it was; and for grid files Python's peak allocation (tracemalloc) stays under
``MAX_PEAK_MB``. Grid cases all fail validation, which happens before Ray
starts; Ray's start is replaced by an error here in case one does not.

:func:`run_cases` returns one dict per case (``kind``, ``case``, ``clean``,
``detail``) for the benchmark that writes BENCHMARKS.md. About 10 s on one core.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import stat
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("grid file", "CLI argument", "report input")
MAX_PEAK_MB = 100
CASE_TIMEOUT_S = 30
PREFIX = "aalr-ray: error:"

GOOD = ("name: bad-input\nepochs: 2\nseeds: 1\ndatasets: [mnist1d]\nmodels: [mnist1d-cnn]\nmethods: [aalr, step]\n")


def _grid(**changes) -> str:
    """GOOD with top-level lines replaced or added (values as YAML text)."""
    lines = dict(line.split(": ", 1) for line in GOOD.splitlines())
    for key, value in changes.items():
        if value is None:
            lines.pop(key, None)
        else:
            lines[key] = value
    return "".join(f"{k}: {v}\n" for k, v in lines.items())


LAUGHS = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
          + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
          + GOOD)


# ------------------------------------------------------------------ grid files
def grid_cases() -> list[tuple[str, object, int, tuple[str, ...]]]:
    """(case, file content: str, bytes or a special marker, problems expected, fragments expected)."""
    nested_flow = "name: x\nepochs: " + "[" * 2000 + "]" * 2000 + "\n"
    nested_block = "name: x\nepochs:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(300))
    return [
        # 1. experiment names that escape --storage or break the file system
        ("name '..' (parent of --storage)", _grid(name="'..'"), 1, ("name", "'..'")),
        ("name '.' (storage root)", _grid(name="'.'"), 1, ("name", "'.'")),
        ("name of 256 characters", _grid(name="a" * 256), 1, ("name", "1-100")),
        ("name with a slash", _grid(name="a/b"), 1, ("name", "'a/b'")),
        ("name '../escape'", _grid(name="../escape"), 1, ("name",)),
        ("empty name", _grid(name="''"), 1, ("name",)),
        ("name not a string", _grid(name="[1, 2]"), 1, ("name", "a string")),
        # 2. numbers that pass a type check and then hang or fail every trial
        ("resources gpu .nan", _grid(resources="{cpu: 1, gpu: .nan}"), 1, ("resources.gpu", "nan")),
        ("resources cpu .nan", _grid(resources="{cpu: .nan}"), 1, ("resources.cpu", "nan")),
        ("resources cpu .inf", _grid(resources="{cpu: .inf}"), 1, ("resources.cpu", "inf")),
        ("resources cpu 0", _grid(resources="{cpu: 0}"), 1, ("resources.cpu",)),
        ("resources gpu -1", _grid(resources="{gpu: -1}"), 1, ("resources.gpu",)),
        ("resources cpu 1.5 (Ray wants whole numbers above 1)", _grid(resources="{cpu: 1.5}"), 1, ("resources.cpu",)),
        ("resources cpu 100000", _grid(resources="{cpu: 100000}"), 1, ("resources.cpu", "1024")),
        ("resources tpu", _grid(resources="{tpu: 1}"), 1, ("resources.tpu", "cpu, gpu")),
        ("override weight_decay -5", _grid(overrides="[{match: {method: aalr}, set: {weight_decay: -5}}]"), 1,
         ("overrides[0].set.weight_decay", "-5")),
        ("override method_options lr 'fast'",
         _grid(overrides="[{match: {method: aalr}, set: {method_options: {lr: fast}}}]"), 1,
         ("overrides[0].set.method_options.lr", "'fast'")),
        ("override option the matched method lacks",
         _grid(overrides="[{match: {model: mnist1d-cnn}, set: {method_options: {phase1_patience: 3}}}]"), 1,
         ("overrides[0].set.method_options.phase1_patience", "step")),
        ("override augmentation the dataset lacks",
         _grid(overrides="[{match: {method: aalr}, set: {augmentation: cutout}}]"), 1,
         ("overrides[0].set.augmentation", "mnist1d")),
        ("override epochs 0", _grid(overrides="[{match: {seed: 0}, set: {epochs: 0}}]"), 1,
         ("overrides[0].set.epochs",)),
        ("override batch_size 'big'", _grid(overrides="[{match: {seed: 0}, set: {batch_size: big}}]"), 1,
         ("overrides[0].set.batch_size",)),
        ("override matching no trial", _grid(overrides="[{match: {model: mlp}, set: {epochs: 3}}]"), 1,
         ("overrides[0].match", "no trial")),
        ("override key that cannot be set", _grid(overrides="[{match: {seed: 0}, set: {lr: 1}}]"), 1,
         ("overrides[0].set.lr", "cannot override")),
        ("method option of an unknown value", _grid(method_options="{aalr: {window: sideways}}"), 1,
         ("method_options.aalr.window", "text, pseudocode")),
        ("int where a bool is expected", _grid(method_options="{aalr: {collapse_is_divergence: 1}}"), 1,
         ("method_options.aalr.collapse_is_divergence", "true or false")),
        ("lr 1e-3 (YAML text, not a number)", _grid(method_options="{aalr: {lr: 1e-3}}"), 1,
         ("method_options.aalr.lr", "1.0e-3")),
        ("plateau factor 2", _grid(methods="[plateau]", method_options="{plateau: {factor: 2}}"), 1,
         ("method_options.plateau.factor", "(0, 1)")),
        ("step nesterov without momentum (fails to build)",
         _grid(method_options="{step: {nesterov: true, momentum: 0}}"), 1, ("method_options.step", "Nesterov")),
        ("adam betas out of range", _grid(methods="[adam]", method_options="{adam: {betas: [0.9, 1.5]}}"), 1,
         ("method_options.adam.betas",)),
        ("sgdr T_0 2.5 (an integer option)", _grid(methods="[sgdr]", method_options="{sgdr: {T_0: 2.5}}"), 1,
         ("method_options.sgdr.T_0", "integer")),
        ("options of an unknown method", _grid(method_options="{magic: {lr: 1}}"), 1, ("method_options.magic",)),
        # 3. YAML that exhausts memory, recursion or hides a mistake
        ("billion laughs (nested aliases)", LAUGHS, 1, ("anchors are not allowed",)),
        ("one alias", "x: &v 3\n" + _grid(epochs="*v"), 1, ("anchors are not allowed",)),
        ("merge key from an alias", "base: &b {cpu: 1}\n" + _grid(resources="{<<: *b}"), 1, ("anchors",)),
        ("duplicate top-level key", GOOD + "epochs: 3\n", 1, ("duplicate key 'epochs'", "line 7")),
        ("duplicate nested key", _grid(resources="{cpu: 1, cpu: 2}"), 1, ("duplicate key 'cpu'",)),
        ("2000 nested flow sequences", nested_flow, 1, ("nest",)),
        ("300 nested block mappings", nested_block, 1, ("nested deeper than 50",)),
        ("file over 1 MB", GOOD + "#" * 1_100_000 + "\n", 1, ("too large",)),
        ("50,000 values", _grid(seeds="[" + ",".join(str(i) for i in range(50_000)) + "]"), 1,
         ("more than 20000 values",)),
        ("integer of 5000 digits", _grid(epochs="9" * 5000), 1, ("digits", "line 2")),
        ("seeds 10**9 (a list of a billion)", _grid(seeds=str(10**9)), 1, ("seeds", "10000")),
        ("seeds beyond 2**63", _grid(seeds=f"[{2**70}]"), 1, ("seeds[0]",)),
        ("a million trials", _grid(seeds="1000", batch_sizes="[" + ",".join(map(str, range(1, 1001))) + "]"), 1,
         ("2000000 trials", "10000")),
        # 4. files that are not text, not files, or run broken code
        ("not UTF-8 (Latin-1)", GOOD.encode() + "# caf\xe9\n".encode("latin-1"), 1, ("not UTF-8", "0xe9")),
        ("binary (PNG header)", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, 1, ("not UTF-8",)),
        ("NUL byte in UTF-8 text", GOOD + "\x00\n", 1, ("not valid YAML",)),
        ("UTF-16 with BOM", GOOD.encode("utf-16"), 1, ("not UTF-8",)),
        ("a directory", "<dir>", 1, ("is a directory",)),
        ("no such file", "<missing>", 1, ("no such grid file",)),
        ("a FIFO (would block a reader)", "<fifo>", 1, ("not a regular file",)),
        ("unreadable (mode 000)", "<unreadable>", 1, ("",)),
        ("empty file", "", 1, ("empty file",)),
        ("top level is a list", "- name: x\n", 1, ("expected a mapping",)),
        ("python tag (code execution attempt)",
         "name: !!python/object/apply:os.system ['echo pwned']\n" + _grid(name=None), 1,
         ("not valid YAML", "python/object/apply")),
        ("import path whose module raises", _grid(datasets="[bad_input_raises:make]"), 1,
         ("datasets[0]", "RuntimeError", "boom")),
        ("import path with a syntax error", _grid(models="[bad_input_syntax:build]"), 1,
         ("models[0]", "SyntaxError")),
        ("import path whose module calls sys.exit", _grid(models="[bad_input_exits:build]"), 1,
         ("models[0]", "SystemExit")),
        ("import path that is not callable", _grid(models="[bad_input_raises_not:VALUE]"), 1,
         ("models[0]", "not callable")),
        ("malformed import path", _grid(models="['a:b:c']"), 1, ("models[0]", "import path")),
        # older checks (tests/test_grid.py), kept refused
        ("unknown key", _grid(colour="blue"), 1, ("colour", "valid keys")),
        ("epochs 0", _grid(epochs="0"), 1, ("epochs",)),
        ("unknown method", _grid(methods="[aalr, magic]"), 1, ("methods[1]", "'magic'", "prodigy")),
        ("unknown dataset", _grid(datasets="[imagenet]"), 1, ("datasets[0]", "cifar10")),
        ("model that cannot take the dataset", _grid(models="[resnet18]"), 1, ("resnet18", "exclude")),
        ("repeated seeds", _grid(seeds="[1, 1]"), 1, ("seeds",)),
        ("repeated method", _grid(methods="[aalr, aalr]"), 1, ("methods[1]", "twice")),
        ("weight_decay [-1]", _grid(weight_decay="[-1]"), 1, ("weight_decay[0]",)),
        ("weight_decay .nan", _grid(weight_decay=".nan"), 1, ("weight_decay",)),
        ("unknown training mode", _grid(training="[cw]"), 1, ("training[0]", "natural, fgsm, pgd")),
        ("robust_eval unknown key", _grid(robust_eval="{steps: 3}"), 1, ("robust_eval.steps",)),
        ("robust_eval subset -1", _grid(robust_eval="{subset: -1}"), 1, ("robust_eval.subset",)),
        ("exclude leaving no trials", _grid(exclude="[{method: aalr}, {method: step}]"), 1, ("no trials",)),
        ("device cuda:99999999", _grid(device="cuda:99999999"), 1, ("device",)),
        ("max_concurrent 0", _grid(max_concurrent="0"), 1, ("max_concurrent",)),
        ("workers_per_trial 10**6", _grid(workers_per_trial="1000000"), 1, ("workers_per_trial", "1024")),
        ("missing required keys", "name: x\n", 4, ("missing",)),
        ("every problem at once",
         _grid(colour="blue", epochs="0", methods="[aalr, magic]", resources="{cpu: .nan}", name="'..'"), 5,
         ("colour", "epochs", "methods[1]", "resources.cpu", "name")),
    ]


MODULES = {
    "bad_input_raises.py": "raise RuntimeError('boom at import')\nVALUE = 1\n",
    "bad_input_raises_not.py": "VALUE = 1\n",
    "bad_input_syntax.py": "def build(:\n    pass\n",
    "bad_input_exits.py": "import sys\nsys.exit(3)\n",
}


def _write_grid(directory: Path, content) -> Path:
    path = directory / "grid.yaml"
    if content == "<dir>":
        path.mkdir()
    elif content == "<fifo>":
        os.mkfifo(path)
    elif content == "<unreadable>":  # also invalid, so a root user (who can read it) is refused too
        path.write_text(_grid(colour="blue"))
        path.chmod(0)
    elif content != "<missing>":
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# ------------------------------------------------------------------ CLI arguments
TRAIN = ["train", "--model", "mnist1d-cnn", "--dataset", "mnist1d", "--epochs", "2"]


def _train(directory: Path, *extra: str, out: str | None = "run.jsonl") -> list[str]:
    args = list(TRAIN)
    for i in range(0, len(extra), 2):
        flag = extra[i]
        if flag in args and i + 1 < len(extra):
            args[args.index(flag) + 1] = extra[i + 1]
        else:
            args += list(extra[i:i + 2])
    args += ["--data-dir", str(directory / "data")]
    return args + (["--out", str(directory / out)] if out else [])


def _read_only_out(directory: Path) -> str:
    """A path that cannot be written: in a mode-555 directory, or (as root, who may write
    there anyway) under /sys."""
    locked = directory / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() != 0:
        return str(locked / "run.jsonl")
    return "/sys/aalr-ray-bad-input.jsonl"


def cli_cases(directory: Path) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """(case, argv, fragments expected); each argv runs in a fresh ``directory``."""
    existing = directory / "existing.jsonl"
    return [
        ("unknown model", _train(directory, "--model", "resnet9000"), ("resnet9000", "mnist1d-cnn")),
        ("epochs 0", _train(directory, "--epochs", "0"), ("--epochs", "0")),
        ("epochs not an integer", _train(directory, "--epochs", "abc"), ("--epochs", "'abc'")),
        ("missing --model", ["train", "--dataset", "mnist1d", "--epochs", "1"], ("--model",)),
        ("unknown flag", _train(directory, "--colour", "blue"), ("--colour",)),
        ("no sub-command", [], ("command",)),
        ("seed -1", _train(directory, "--seed", "-1"), ("--seed", "-1")),
        ("seed 2**70", _train(directory, "--seed", str(2**70)), ("--seed",)),
        ("weight decay nan", _train(directory, "--weight-decay", "nan"), ("--weight-decay", "nan")),
        ("threads -3", _train(directory, "--threads", "-3"), ("--threads",)),
        ("device tpu", _train(directory, "--device", "tpu"), ("'tpu'", "cpu")),
        ("device cuda:7 (not on this machine)", _train(directory, "--device", "cuda:7"), ("cuda:7",)),
        ("option lr -1", _train(directory, "--option", "lr=-1"), ("--option lr", "-1")),
        ("option lr NaN", _train(directory, "--option", "lr=NaN"), ("--option lr", "nan")),
        ("option window bogus", _train(directory, "--option", "window=bogus"), ("window", "text, pseudocode")),
        ("unknown option", _train(directory, "--option", "nonsense=1"), ("nonsense", "lr")),
        ("option without '='", _train(directory, "--option", "lr"), ("KEY=VALUE",)),
        ("unknown training mode", _train(directory, "--training", "cw"), ("'cw'",)),
        ("--out exists (kept as it was)", _train(directory, out="existing.jsonl"), ("already exists", "remove")),
        ("--out is a directory", _train(directory, out="."), ("is a directory",)),
        ("--out in a missing directory", _train(directory, out="nowhere/run.jsonl"), ("nowhere", "does not exist")),
        ("--out read-only", _train(directory, out=None) + ["--out", _read_only_out(directory)], ("--out",)),
        ("dataset import path whose module raises", _train(directory, "--dataset", "bad_input_raises:make"),
         ("bad_input_raises", "boom")),
        ("grid without a file", ["grid"], ("job",)),
        ("grid file path with a newline", ["grid", str(directory / "no\nsuch.yaml")], ("\\n", "no such grid file")),
        ("grid file path with a NUL byte", ["grid", "job\x00.yaml"], ("\\x00", "no such grid file")),
        ("report without a directory", ["report"], ("experiment",)),
    ], existing


# ------------------------------------------------------------------ report inputs
def _experiment(directory: Path) -> Path:
    """A small valid experiment directory (the Parquet files aalr-ray grid writes)."""
    from aalr_ray.grid import expand, parse_grid
    from aalr_ray.runner import Collected, trial_summary, write_parquet

    configs = expand(parse_grid({"name": "x", "epochs": 2, "seeds": 1, "datasets": ["mnist1d"],
                                 "models": ["mnist1d-cnn"], "methods": ["aalr", "step"]}))
    epochs, trials = [], []
    for i, config in enumerate(configs):
        rows = [{"epoch": e, "lr": 0.1, "train_loss": 1.0 / e, "test_loss": 1.0, "test_acc": 0.5 + e / 10,
                 "epoch_s": 0.1, "eval_s": 0.01, "bad_loss": False} for e in (1, 2)]
        flat = {k: (str(v) if isinstance(v, dict) else v) for k, v in config.items()}
        epochs += [{"trial_id": f"t{i}", **flat, **row} for row in rows]
        trials.append({"trial_id": f"t{i}", **trial_summary(flat, rows, "TERMINATED", None)})
    experiment = directory / "experiment"
    experiment.mkdir()
    write_parquet(str(experiment), Collected(epochs, trials))
    return experiment


def report_cases(directory: Path) -> list[tuple[str, Callable, tuple[str, ...]]]:
    """(case, a function that spoils a valid experiment directory and returns the argument, fragments)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def spoil(name, how):
        def apply(experiment: Path) -> str:
            path = experiment / name
            data = path.read_bytes()
            if how == "empty":
                path.write_bytes(b"")
            elif how == "truncated":
                path.write_bytes(data[: len(data) // 2])
            elif how == "garbage":
                path.write_bytes(os.urandom(len(data)))
            elif how == "csv":
                path.write_text("trial_id,dataset\nt0,mnist1d\n")
            elif how == "missing":
                path.unlink()
            elif how == "directory":
                path.unlink()
                path.mkdir()
            elif how == "schema":
                table = pq.read_table(path)
                pq.write_table(table.drop([c for c in ("dataset", "test_acc") if c in table.column_names]), path)
            elif how == "types":
                table = pq.read_table(path)
                index = table.column_names.index("model")
                pq.write_table(table.set_column(index, "model", pa.array([7] * table.num_rows)), path)
            elif how == "nulls":
                table = pq.read_table(path)
                index = table.column_names.index("method")
                pq.write_table(table.set_column(index, "method", pa.array([None] * table.num_rows, pa.string())),
                               path)
            return str(experiment)
        return apply

    return [
        ("experiment directory missing", lambda e: str(e.parent / "nowhere"), ("trials.parquet", "nowhere")),
        ("directory without trials.parquet", spoil("trials.parquet", "missing"), ("trials.parquet",)),
        ("empty trials.parquet", spoil("trials.parquet", "empty"), ("trials.parquet", "Parquet")),
        ("truncated trials.parquet", spoil("trials.parquet", "truncated"), ("trials.parquet", "Parquet")),
        ("corrupt trials.parquet", spoil("trials.parquet", "garbage"), ("trials.parquet",)),
        ("CSV named trials.parquet", spoil("trials.parquet", "csv"), ("trials.parquet",)),
        ("trials.parquet is a directory", spoil("trials.parquet", "directory"), ("trials.parquet",)),
        ("trials.parquet without a column", spoil("trials.parquet", "schema"), ("trials.parquet", "dataset")),
        ("trials.parquet: numbers for model names", spoil("trials.parquet", "types"), ("trials.parquet", "model")),
        ("trials.parquet: empty method names", spoil("trials.parquet", "nulls"), ("trials.parquet", "method")),
        ("epochs.parquet missing", spoil("epochs.parquet", "missing"), ("epochs.parquet", "no such file")),
        ("empty epochs.parquet", spoil("epochs.parquet", "empty"), ("epochs.parquet",)),
        ("truncated epochs.parquet", spoil("epochs.parquet", "truncated"), ("epochs.parquet",)),
        ("epochs.parquet without a column", spoil("epochs.parquet", "schema"), ("epochs.parquet", "test_acc")),
    ]


# ------------------------------------------------------------------ running and judging
def _tree(directory: Path) -> dict[str, tuple]:
    """Every path under ``directory`` with its size and modification time."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root, name)
            info = path.lstat()
            found[str(path)] = (info.st_size if not stat.S_ISDIR(info.st_mode) else 0, info.st_mtime_ns)
    return found


class _Timeout(Exception):
    pass


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _time_limit(seconds: int):
    """SIGALRM after ``seconds`` (a reader blocked on a FIFO, an endless loop): the case fails."""
    if _main_thread() and hasattr(signal, "SIGALRM"):
        def fire(signum, frame):
            raise _Timeout(f"no answer within {seconds} s")

        previous = signal.signal(signal.SIGALRM, fire)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    else:
        yield


def _call(argv: list[str], measure: bool) -> tuple[object, str, str, float]:
    """(exit status or the exception raised, stdout, stderr, peak MB) of ``main(argv)``."""
    from aalr_ray.cli import main

    out, err = io.StringIO(), io.StringIO()
    if measure:
        tracemalloc.start()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _time_limit(CASE_TIMEOUT_S):
            status = main(argv)
    except SystemExit as exc:
        status = exc.code
    except BaseException as exc:  # noqa: BLE001 - a traceback is what is being judged
        status = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 1e6 if measure else 0.0
        if measure:
            tracemalloc.stop()
    return status, out.getvalue(), err.getvalue(), peak


def _judge(status, stderr: str, problems: int, fragments: tuple[str, ...], peak: float,
           before: dict, after: dict) -> str:
    """"" when clean, else why not."""
    if isinstance(status, BaseException):
        return f"raised {type(status).__name__}: {str(status)[:120]}"
    if status != 2:
        return f"exit status {status!r}, expected 2"
    lines = stderr.splitlines()
    if "Traceback" in stderr:
        return "traceback on stderr"
    if len(lines) != problems:
        return f"{len(lines)} stderr lines for {problems} problem(s): {stderr[:300]!r}"
    if not all(line.startswith(PREFIX) for line in lines):
        return f"a line without {PREFIX!r}: {stderr[:200]!r}"
    missing = [f for f in fragments if f and f not in stderr]
    if missing:
        return f"message lacks {missing}: {stderr[:300]!r}"
    if before != after:
        changed = sorted(set(after) ^ set(before) | {k for k in before if k in after and before[k] != after[k]})
        return f"the file system changed: {changed[:3]}"
    if peak > MAX_PEAK_MB:
        return f"peak memory {peak:.0f} MB > {MAX_PEAK_MB} MB"
    return ""


@contextlib.contextmanager
def _no_ray():
    """Ray's start replaced by an error, so that a grid case that passes validation fails here instead."""
    from aalr_ray import runner

    def refuse(*args, **kwargs):
        raise RuntimeError("bench/bad_input.py: this grid passed validation and would have started Ray")

    original = runner._init_ray
    runner._init_ray = refuse
    try:
        yield
    finally:
        runner._init_ray = original


def _warm_up() -> None:
    """Imports and first uses, so that a case's time and memory are its own."""
    import aalr_ray.report  # noqa: F401
    import aalr_ray.runner  # noqa: F401
    from aalr_ray.grid import parse_grid

    parse_grid({"name": "x", "epochs": 1, "datasets": ["mnist1d"], "models": ["mnist1d-cnn"], "methods": "all"})


def _run_grid_cases(tmp: Path) -> list[dict]:
    modules = tmp / "modules"
    modules.mkdir()
    for name, text in MODULES.items():
        (modules / name).write_text(text)
    sys.path.insert(0, str(modules))
    results = []
    try:
        with _no_ray():
            for i, (case, content, problems, fragments) in enumerate(grid_cases()):
                directory = tmp / "grid" / f"{i:02d}"
                directory.mkdir(parents=True)
                path = _write_grid(directory, content)
                before = _tree(directory)
                status, _, err, peak = _call(["grid", str(path), "--storage", str(directory / "storage")], True)
                detail = _judge(status, err, problems, fragments, peak, before, _tree(directory))
                results.append({"kind": "grid file", "case": case, "clean": not detail, "detail": detail})
                if path.exists() and not path.is_dir():
                    path.chmod(0o600)
    finally:
        sys.path.remove(str(modules))
        for name in MODULES:
            sys.modules.pop(name[:-3], None)
    return results


def _run_cli_cases(tmp: Path) -> list[dict]:
    modules = tmp / "cli-modules"
    modules.mkdir()
    (modules / "bad_input_raises.py").write_text(MODULES["bad_input_raises.py"])
    sys.path.insert(0, str(modules))
    results = []
    try:
        for i in range(len(cli_cases(_fresh(tmp / "probe"))[0])):
            directory = tmp / "cli" / f"{i:02d}"
            directory.mkdir(parents=True)
            cases, existing = cli_cases(directory)
            case, argv, fragments = cases[i]
            existing.write_text('{"epoch": 1}\n')
            before = _tree(directory)
            status, _, err, _ = _call(argv, False)
            detail = _judge(status, err, 1, fragments, 0.0, before, _tree(directory))
            results.append({"kind": "CLI argument", "case": case, "clean": not detail, "detail": detail})
    finally:
        for path in tmp.rglob("locked"):
            path.chmod(0o700)  # so that the temporary directory can be removed
        sys.path.remove(str(modules))
        sys.modules.pop("bad_input_raises", None)
    return results


def _run_report_cases(tmp: Path) -> list[dict]:
    from aalr_ray.report import load_results

    load_results(str(_experiment(_fresh(tmp / "control"))))  # the unspoiled directory is valid: each case below spoils one thing
    results = []
    for i, (case, spoil, fragments) in enumerate(report_cases(tmp)):
        directory = tmp / "report" / f"{i:02d}"
        directory.mkdir(parents=True)
        argument = spoil(_experiment(directory))
        before = _tree(directory)
        status, _, err, _ = _call(["report", argument], False)
        detail = _judge(status, err, 1, fragments, 0.0, before, _tree(directory))
        results.append({"kind": "report input", "case": case, "clean": not detail, "detail": detail})
    return results


def _fresh(directory: Path) -> Path:
    directory.mkdir(parents=True)
    return directory


def run_cases(tmpdir) -> list[dict]:
    """Try every bad input; one dict per case: kind, case, clean (bool), detail (why not clean)."""
    tmp = Path(tmpdir)
    _warm_up()
    return _run_grid_cases(tmp) + _run_cli_cases(tmp) + _run_report_cases(tmp)


def summary(results: list[dict]) -> str:
    lines = [f"{'kind':<14} {'tried':>5} {'clean':>5}"]
    for kind in KINDS:
        mine = [r for r in results if r["kind"] == kind]
        lines.append(f"{kind:<14} {len(mine):>5} {sum(r['clean'] for r in mine):>5}")
    lines.append(f"{'all':<14} {len(results):>5} {sum(r['clean'] for r in results):>5}")
    for r in results:
        if not r["clean"]:
            lines.append(f"NOT CLEAN [{r['kind']}] {r['case']}: {r['detail']}")
    return "\n".join(lines)


def main() -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aalr-bad-input-") as tmp:
        results = run_cases(tmp)
    print(summary(results))
    print(f"{time.perf_counter() - started:.1f} s")
    return 0 if all(r["clean"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
