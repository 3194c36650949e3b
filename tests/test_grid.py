"""Grid files: expansion is a pure function; every validation error is reported at once."""

import sys
from pathlib import Path

import pytest
import yaml

from aalr_ray.attacks import AttackConfig
from aalr_ray.grid import GridError, GridFile, expand, load_grid, parse_grid, smoke_configs
from aalr_ray.methods import method_names

JOBS = sorted((Path(__file__).resolve().parent.parent / "jobs").glob("*.yaml"))
BASE = {"name": "t", "epochs": 3, "seeds": 2, "datasets": ["mnist1d"], "models": ["mnist1d-cnn"],
        "methods": ["aalr", "step"]}


def grid(**changes):
    raw = {**BASE, **changes}
    return parse_grid({k: v for k, v in raw.items() if v is not None}, source="g.yaml")


def problems(**changes) -> list[str]:
    with pytest.raises(GridError) as info:
        grid(**changes)
    return info.value.problems


def test_expansion_is_the_product_in_a_stable_order():
    configs = expand(grid(batch_sizes=[32, 128]))
    assert len(configs) == 2 * 2 * 2
    assert [(c["method"], c["seed"], c["batch_size"]) for c in configs[:4]] == [
        ("aalr", 0, 32), ("aalr", 1, 32), ("step", 0, 32), ("step", 1, 32)]
    assert expand(grid(batch_sizes=[32, 128])) == configs  # pure: same input, same output
    assert len({c["trial_name"] for c in configs}) == len(configs)
    assert all(c["epochs"] == 3 and c["training"] == "natural" for c in configs)


def test_seeds_as_count_or_list_and_methods_all():
    assert {c["seed"] for c in expand(grid(seeds=[7, 11]))} == {7, 11}
    assert {c["method"] for c in expand(grid(methods="all", seeds=1))} == set(method_names())


def test_include_exclude_and_overrides():
    g = grid(datasets=["mnist1d", "digits"], models=["mnist1d-cnn", "mlp", "small-cnn"], seeds=1,
             exclude=[{"model": "mnist1d-cnn", "dataset": "digits"}, {"model": "small-cnn", "dataset": "mnist1d"}],
             overrides=[{"match": {"model": "mlp"}, "set": {"epochs": 9, "batch_size": 64}}])
    pairs = {(c["model"], c["dataset"]) for c in expand(g)}
    assert pairs == {("mnist1d-cnn", "mnist1d"), ("mlp", "mnist1d"), ("mlp", "digits"), ("small-cnn", "digits")}
    assert {(c["epochs"], c["batch_size"]) for c in expand(g) if c["model"] == "mlp"} == {(9, 64)}
    only = grid(models=["mnist1d-cnn", "mlp"], include=[{"model": "mlp", "method": "aalr"}])
    assert {(c["model"], c["method"]) for c in expand(only)} == {("mlp", "aalr")}


def test_training_modes_match_by_name_or_exact_spec():
    g = grid(datasets=["digits"], models=["small-cnn", "mlp"], seeds=1, methods=["aalr"],
             training=["natural", "fgsm:eps=0.1", "fgsm:eps=0.2"],
             exclude=[{"model": "mlp", "training": "fgsm"}, {"model": "small-cnn", "training": "fgsm:eps=0.2"}])
    assert sorted((c["model"], c["training"]) for c in expand(g)) == [
        ("mlp", "natural"), ("small-cnn", "fgsm:eps=0.1"), ("small-cnn", "natural")]


def test_every_problem_is_reported_at_once_with_key_paths_and_choices():
    found = problems(colour="blue", epochs=0, methods=["aalr", "magic"], datasets=["mnist1d", "imagenet"],
                     batch_sizes=[0], augmentations=["cutout"], resources={"cpu": 0, "tpu": 1},
                     method_options={"adam": {"beta9": 1}}, training=["cw"], seeds=[1, 1])
    text = "\n".join(found)
    for fragment in ["g.yaml: colour: unknown key; valid keys: name",
                     "g.yaml: epochs: expected a positive integer, got 0",
                     "methods[1]: unknown method 'magic'; choose from: aalr",
                     "datasets[1]: unknown dataset 'imagenet'; choose from: cifar10",
                     "batch_sizes[0]: expected a positive integer",
                     "resources.cpu", "resources.tpu: unknown resource; choose from: cpu, gpu",
                     "method_options.adam.beta9: unknown option; choose from: betas, eps, lr",
                     "training[0]: unknown attack mode 'cw'; choose from natural, fgsm, pgd",
                     "seeds[1]: 1 is listed twice",
                     "augmentations: 'cutout' does not apply to dataset 'mnist1d'; choose from: none"]:
        assert fragment in text
    assert all("\n" not in p for p in found)  # one line each


def test_impossible_pairs_name_the_exclude_to_write():
    found = problems(models=["resnet18", "mnist1d-cnn"], datasets=["mnist1d"])
    assert len(found) == 1
    assert "resnet18" in found[0] and "(1, 40)" in found[0] and "exclude" in found[0]


@pytest.mark.parametrize("field, value, fragment", [
    ("name", "has space", "letters, digits"),
    ("models", [], "non-empty list"),
    ("seeds", "three", "a count n"),
    ("max_concurrent", 0, "positive integer"),
    ("weight_decay", [-1], "number >= 0"),
    ("epoch_loss", "vibes", "train-mean, clean-pass"),
    ("include", [{"colour": "red"}], "unknown key; choose from: dataset"),
    ("overrides", [{"match": {"model": "mlp"}, "set": {"lr": 1}}], "cannot override"),
    ("robust_eval", {"steps": 3}, "unknown key; choose from: eps, alpha, pgd_steps, subset"),
    ("exclude", [{"method": "aalr"}, {"method": "step"}], "leave no trials"),
])
def test_single_field_problems(field, value, fragment):
    assert fragment in "\n".join(problems(**{field: value}))


def test_missing_required_keys():
    with pytest.raises(GridError) as info:
        parse_grid({"name": "x"}, source="g.yaml")
    text = "\n".join(info.value.problems)
    for key in ("epochs", "datasets", "models", "methods"):
        assert f"g.yaml: {key}: missing" in text


def test_import_path_model_and_dataset_factories():
    g = grid(models=["factories:nan_model"], datasets=["data_factories:tensor_pair"], seeds=1)
    assert {(c["model"], c["dataset"]) for c in expand(g)} == {("factories:nan_model", "data_factories:tensor_pair")}
    found = problems(models=["factories:no_such_thing"], datasets=["nowhere.module:make"])
    assert any(p.startswith("g.yaml: models[0]: model 'factories:no_such_thing': module 'factories' has no "
                            "attribute 'no_such_thing'") for p in found)
    assert "g.yaml: datasets[0]: dataset 'nowhere.module:make' does not import: ModuleNotFoundError: " \
           "No module named 'nowhere'" in found


def test_load_grid_uses_safe_yaml_and_reports_the_file(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(bad)
    with pytest.raises(GridError, match="no such grid file"):
        load_grid(tmp_path / "missing.yaml")


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_every_job_file_validates_and_smoke_covers_it(job):
    configs = expand(load_grid(job))
    smoke = smoke_configs(configs)
    for facet in ("method", "augmentation"):
        assert {str(c[facet]) for c in smoke} == {str(c[facet]) for c in configs}, facet

    def attacks(cs):
        return {(AttackConfig.parse(c["training"]).mode, AttackConfig.parse(c["training"]).eps) for c in cs}

    assert attacks(smoke) == attacks(configs)
    assert all(AttackConfig.parse(c["training"]).steps <= 2 for c in smoke
               if AttackConfig.parse(c["training"]).mode == "pgd")
    assert len(smoke) >= len({c["batch_size"] for c in configs})  # each batch size ran once (capped)
    assert {(c["model"], c["dataset"]) for c in smoke} == {(c["model"], c["dataset"]) for c in configs}
    assert all(c["smoke"] and c["epochs"] <= 2 and c["train_limit"] <= 4 and c["batch_size"] <= 4 for c in smoke)
    assert yaml.safe_load(job.read_text())["name"] == load_grid(job).name


# ------------------------------------------------- issue 12: bad files refused cleanly
def one_problem(**changes) -> str:
    found = problems(**changes)
    assert len(found) == 1, found
    assert "\n" not in found[0]
    return found[0]


@pytest.mark.parametrize("name", ["..", ".", "a" * 101, "a" * 256, "a/b", "../up", "", "has space"])
def test_a_name_is_one_path_component(name):
    line = one_problem(name=name)
    assert line.startswith("g.yaml: name: ") and "1-100 letters" in line


@pytest.mark.parametrize("name", ["my-grid.v2", "a" * 100, "x_1", ".hidden"])
def test_good_names(name):
    assert grid(name=name).name == name


@pytest.mark.parametrize("resources, path", [
    ({"gpu": float("nan")}, "resources.gpu"), ({"cpu": float("nan")}, "resources.cpu"),
    ({"cpu": float("inf")}, "resources.cpu"), ({"gpu": float("inf")}, "resources.gpu"),
    ({"cpu": 1.5}, "resources.cpu"), ({"gpu": 2.5}, "resources.gpu"), ({"cpu": 10**6}, "resources.cpu"),
    ({"cpu": True}, "resources.cpu"), ({"gpu": "1"}, "resources.gpu"),
])
def test_resources_are_finite_and_in_range(resources, path):
    assert one_problem(resources=resources).startswith(f"g.yaml: {path}: ")


def test_fractional_and_whole_resources_pass():
    assert grid(resources={"cpu": 0.5, "gpu": 0.25}).resources == {"cpu": 0.5, "gpu": 0.25}
    assert grid(resources={"cpu": 4, "gpu": 2.0}).resources == {"cpu": 4, "gpu": 2.0}


@pytest.mark.parametrize("set_, fragment", [
    ({"weight_decay": -5}, "overrides[0].set.weight_decay: expected a finite number >= 0, got -5"),
    ({"weight_decay": float("nan")}, "overrides[0].set.weight_decay: expected a finite number >= 0, got nan"),
    ({"epochs": 0}, "overrides[0].set.epochs: expected a positive integer, got 0"),
    ({"batch_size": 2.5}, "overrides[0].set.batch_size: expected a positive integer, got 2.5"),
    ({"augmentation": "mixup"}, "overrides[0].set.augmentation: unknown augmentation 'mixup'"),
    ({"augmentation": "cutout"}, "overrides[0].set.augmentation: 'cutout' does not apply to dataset 'mnist1d'"),
    ({"method_options": {"lr": "fast"}}, "overrides[0].set.method_options.lr: expected a finite number > 0, "
                                         "got 'fast' (in trials of method 'aalr')"),
    ({"method_options": {"window": 3}}, "overrides[0].set.method_options.window: expected one of: text"),
    ({"method_options": 5}, "overrides[0].set.method_options: expected a mapping"),
])
def test_override_values_are_checked_like_top_level_values(set_, fragment):
    line = one_problem(overrides=[{"match": {"method": "aalr"}, "set": set_}])
    assert fragment in line


def test_an_override_option_the_matched_method_lacks_names_the_method():
    line = one_problem(overrides=[{"match": {"model": "mnist1d-cnn"}, "set": {"method_options": {"window": "text"}}}])
    assert line.startswith("g.yaml: overrides[0].set.method_options.window: unknown option; choose from: gamma")
    assert "(in trials of method 'step')" in line


def test_an_override_that_matches_no_trial_is_reported():
    line = one_problem(overrides=[{"match": {"model": "mlp"}, "set": {"epochs": 2}}])
    assert line == "g.yaml: overrides[0].match: matches no trial: {'model': 'mlp'}"


def test_a_valid_override_of_options_applies_per_method():
    g = grid(overrides=[{"match": {"method": "step"}, "set": {"method_options": {"lr": 0.05, "gamma": 0.5}}},
                        {"match": {"seed": 1}, "set": {"weight_decay": 0, "batch_size": 32}}])
    configs = {(c["method"], c["seed"]): c for c in expand(g)}
    assert configs[("step", 0)]["method_options"] == {"lr": 0.05, "gamma": 0.5}
    assert configs[("aalr", 0)]["method_options"] == {}
    assert (configs[("aalr", 1)]["weight_decay"], configs[("aalr", 1)]["batch_size"]) == (0, 32)


@pytest.mark.parametrize("options, fragment", [
    ({"aalr": {"lr": "1e-3"}}, "method_options.aalr.lr: expected a finite number > 0, got '1e-3' (YAML reads"),
    ({"aalr": {"lr": 0}}, "method_options.aalr.lr: expected a finite number > 0"),
    ({"aalr": {"lr": float("inf")}}, "method_options.aalr.lr"),
    ({"aalr": {"collapse_is_divergence": 1}}, "method_options.aalr.collapse_is_divergence: expected true or false"),
    ({"aalr": {"phase1_patience": 2.0}}, "method_options.aalr.phase1_patience: expected an integer >= 1"),
    ({"aalr": {"phase1_patience": True}}, "method_options.aalr.phase1_patience: expected an integer >= 1"),
    ({"aalr": {"window": "sideways"}}, "method_options.aalr.window: expected one of: text, pseudocode"),
    ({"aalr": {"final": "middle"}}, "method_options.aalr.final: expected one of: last, best"),
    ({"aalr": {"best_path": 3}}, "method_options.aalr.best_path: expected a file path, or null"),
    ({"step": {"recipe": "nope"}}, "method_options.step.recipe: expected one of: auto, cutout, he2016"),
    ({"step": {"milestones": [60, 120]}}, "method_options.step.milestones: expected a non-empty list of fractions"),
    ({"step": {"nesterov": "yes"}}, "method_options.step.nesterov: expected true or false, or null"),
    ({"step": {"nesterov": True, "momentum": 0}}, "method_options.step: method 'step' does not build with these "
                                                  "options: ValueError: Nesterov momentum requires a momentum"),
    ({"step": {"beta9": 1}}, "method_options.step.beta9: unknown option; choose from: gamma"),
])
def test_method_options_are_checked_against_the_method(options, fragment):
    assert fragment in one_problem(method_options=options)


@pytest.mark.parametrize("method, options", [
    ("plateau", {"factor": 1.0}), ("plateau", {"threshold_mode": "up"}), ("plateau", {"patience": -1}),
    ("clr", {"mode": "sine"}), ("clr", {"cycle_momentum": "no"}), ("sgdr", {"T_mult": 1.5}),
    ("adam", {"betas": [0.9]}), ("adam", {"eps": -1}), ("prodigy", {"decouple": 0}), ("prodigy", {"schedule": "x"}),
    ("dadapt", {"d0": 0}), ("schedule-free", {"warmup_steps": 0.5}), ("dog", {"reps_rel": 0}),
    ("sgd-hd", {"hypergrad_lr": -1}),
])
def test_every_method_refuses_a_wrong_option(method, options):
    line = one_problem(methods=[method], method_options={method: options})
    assert line.startswith(f"g.yaml: method_options.{method}.{next(iter(options))}: expected ")


def test_every_methods_defaults_and_ints_for_floats_pass():
    from aalr_ray.grid import option_problems
    from aalr_ray.methods import METHODS

    for method, spec in METHODS.items():
        assert option_problems(method, dict(spec.defaults)) == [], method
    assert option_problems("aalr", {"lr": 1, "momentum": 0}) == []
    assert option_problems("clr", {"step_size_epochs": 0.5}) == []
    assert grid(method_options={"adam": {"lr": 1, "betas": [0.8, 0.9]}}).method_options == {
        "adam": {"lr": 1, "betas": [0.8, 0.9]}}


@pytest.mark.parametrize("changes, fragment", [
    ({"seeds": 10**9}, "seeds: expected a positive integer of at most 10000"),
    ({"seeds": [2**64]}, "seeds[0]: expected an integer seed in 0..2**63-1"),
    ({"seeds": [-1]}, "seeds[0]: expected an integer seed"),
    ({"epochs": 10**40}, "epochs: expected a positive integer of at most 2147483647"),
    ({"workers_per_trial": 10**6}, "workers_per_trial: expected a positive integer of at most 1024"),
    ({"seeds": 1000, "batch_sizes": list(range(1, 101))}, "200000 trials (before include/exclude); the limit is 10000"),
    ({"batch_sizes": []}, "batch_sizes: expected a non-empty list"),
    ({"weight_decay": []}, "weight_decay: expected a number or a non-empty list"),
    ({"methods": ["aalr", "aalr"]}, "methods[1]: 'aalr' is listed twice"),
    ({"training": ["fgsm:eps=0.1", {"mode": "fgsm", "eps": 0.1}]}, "training[1]: "),
    ({"robust_eval": {"subset": 0}}, "robust_eval.subset: expected a positive integer"),
    ({"device": "cuda:1234"}, "device: unknown device 'cuda:1234'"),
])
def test_numbers_and_sizes_in_range(changes, fragment):
    assert fragment in one_problem(**changes)


def test_long_values_are_cut_in_messages():
    line = one_problem(epoch_loss="x" * 100_000)
    assert len(line) < 300 and "..." in line


def test_trials_the_short_name_cannot_tell_apart_get_distinct_names():
    configs = expand(grid(weight_decay=[5e-4, 1e-4], seeds=1, methods=["aalr"]))
    names = [c["trial_name"] for c in configs]
    assert names == ["aalr-mnist1d-cnn-mnist1d-bs128-s0-wd0.0005", "aalr-mnist1d-cnn-mnist1d-bs128-s0-wd0.0001"]
    configs = expand(grid(datasets=["digits"], models=["mlp"], training=["fgsm:eps=0.1", "fgsm:eps=0.2"], seeds=1))
    assert len({c["trial_name"] for c in configs}) == len(configs) == 4
    unchanged = expand(grid(seeds=1))  # names that were distinct stay as they were
    assert [c["trial_name"] for c in unchanged] == ["aalr-mnist1d-cnn-mnist1d-bs128-s0",
                                                     "step-mnist1d-cnn-mnist1d-bs128-s0"]


# YAML files
GOOD = "name: t\nepochs: 3\nseeds: 1\ndatasets: [mnist1d]\nmodels: [mnist1d-cnn]\nmethods: [aalr]\n"
LAUGHS = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
          + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)))


def file_problems(tmp_path, content) -> list[str]:
    path = tmp_path / "g.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(GridError) as info:
        load_grid(path)
    return info.value.problems


@pytest.mark.parametrize("fast", [True, False], ids=["libyaml", "python"])
def test_the_loader_refuses_aliases_duplicates_and_deep_nesting(fast):
    import tracemalloc
    import time

    from aalr_ray.safeyaml import SafeLoader, YamlRefused, load_text

    assert issubclass(SafeLoader, yaml.SafeLoader)
    assert len(LAUGHS) < 700
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(YamlRefused, match=r"anchors are not allowed \(&a at line 1"):
        load_text(LAUGHS, fast=fast)
    assert time.perf_counter() - started < 1 and tracemalloc.get_traced_memory()[1] < 10e6
    tracemalloc.stop()
    with pytest.raises(YamlRefused, match=r"aliases are not allowed"):
        load_text("a: *x\n", fast=fast)  # an alias without its anchor: refused before anything else
    with pytest.raises(YamlRefused, match=r"duplicate key 'epochs' at line 3, column 1 \(first at line 1"):
        load_text("epochs: 1\nname: x\nepochs: 2\n", fast=fast)
    with pytest.raises(YamlRefused, match=r"duplicate key 'cpu'"):
        load_text("resources: {cpu: 1, gpu: 0, cpu: 2}\n", fast=fast)
    with pytest.raises(YamlRefused, match=r"nest"):
        load_text("x: " + "[" * 5000 + "]" * 5000, fast=fast)
    with pytest.raises(YamlRefused, match=r"nested deeper than 50 levels"):
        load_text("".join("  " * i + f"k{i}:\n" for i in range(200)), fast=fast)
    with pytest.raises(YamlRefused, match=r"more than 20000 values"):
        load_text("x: [" + "1," * 30_000 + "1]", fast=fast)
    with pytest.raises(YamlRefused, match=r"an integer of 5000 digits \(at line 1, column 4\)"):
        load_text("x: " + "9" * 5000, fast=fast)
    # safe_load's results otherwise, both ways
    text = "a: 0x10\nb: [1.5, .nan, null, yes, '1e-3', 1e-3]\nc: {d: 2020-01-01}\n"
    assert repr(load_text(text, fast=fast)) == repr(yaml.safe_load(text))


def test_load_grid_refuses_bad_files_in_one_line(tmp_path):
    cases = [
        (LAUGHS + GOOD, "anchors are not allowed"),
        (GOOD + "epochs: 4\n", "duplicate key 'epochs' at line 7"),
        (GOOD.encode() + b"# caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text (byte 0x89 at offset 0)"),
        (GOOD + "\x00", "not valid YAML"),
        ("", "got an empty file"),
        (GOOD + "#" * 1_000_001, f"too large: {len(GOOD) + 1_000_001} bytes; the limit is 1000000"),
        ("name: x\nepochs: " + "[" * 100 + "]" * 100, "nest"),
    ]
    for content, fragment in cases:
        found = file_problems(tmp_path, content)
        assert len(found) == 1 and fragment in found[0] and found[0].startswith(str(tmp_path / "g.yaml")), found


def test_the_size_limit_reads_at_most_one_byte_more(tmp_path, monkeypatch):
    from aalr_ray import safeyaml

    path = tmp_path / "g.yaml"
    path.write_text(GOOD + "#" * 100)
    reads = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n=-1):
            reads.append(n)
            return self.f.read(n)

    monkeypatch.setattr("builtins.open", lambda p, mode="r", *a, **k: Spy(real_open(p, mode, *a, **k)))
    with pytest.raises(safeyaml.YamlRefused, match="too large"):
        safeyaml.read_text(path, max_bytes=50)  # stat says so: nothing read at all
    assert reads == []
    monkeypatch.setattr(Path, "stat", lambda self, **k: type("S", (), {"st_mode": 0o100644, "st_size": 0})())
    with pytest.raises(safeyaml.YamlRefused, match="too large: over 50 bytes"):
        safeyaml.read_text(path, max_bytes=50)  # a file that grew after stat: one read of limit + 1
    assert reads == [51]


def test_load_grid_refuses_directories_fifos_and_unreadable_files(tmp_path):
    import os

    with pytest.raises(GridError, match="is a directory"):
        load_grid(tmp_path)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(GridError, match="not a regular file"):
        load_grid(fifo)  # would block a reader forever
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.yaml"
        locked.write_text(GOOD)
        locked.chmod(0)
        with pytest.raises(GridError, match="cannot read it: Permission denied"):
            load_grid(locked)


def test_import_paths_whose_module_fails_are_one_line_each(tmp_path, monkeypatch):
    (tmp_path / "raises_on_import.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    (tmp_path / "broken_syntax.py").write_text("def build(:\n")
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(4)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = problems(datasets=["raises_on_import:make"], models=["broken_syntax:build", "exits_on_import:build"])
    assert found == [
        "g.yaml: datasets[0]: dataset 'raises_on_import:make' does not import: RuntimeError: boom",
        "g.yaml: models[0]: model 'broken_syntax:build' does not import: "
        "SyntaxError: invalid syntax (broken_syntax.py, line 1)",
        "g.yaml: models[1]: model 'exits_on_import:build' does not import: SystemExit: 4"]
    for module in ("raises_on_import", "broken_syntax", "exits_on_import"):
        monkeypatch.delitem(sys.modules, module, raising=False)


# ------------------------------------------------- issue 13: the schema on pydantic
@pytest.mark.parametrize("changes, line", [
    ({"colour": "blue"}, "g.yaml: colour: unknown key; valid keys: name, epochs, seeds, datasets"),
    ({"include": [{"method": "aalr", "colour": "red"}]}, "g.yaml: include[0].colour: unknown key; choose from: "
                                                         "dataset, model, method, seed"),
    ({"overrides": [{"match": {"method": "aalr"}, "set": {"epochs": 2}, "when": "now"}]},
     "g.yaml: overrides[0].when: unknown key; choose from: match, set"),
    ({"overrides": [{"match": {"method": "aalr"}, "set": {"lr": 1}}]},
     "g.yaml: overrides[0].set.lr: cannot override; choose from: epochs, batch_size, weight_decay"),
    ({"resources": {"cpu": 1, "tpu": 1}}, "g.yaml: resources.tpu: unknown resource; choose from: cpu, gpu"),
    ({"robust_eval": {"subset": 10, "steps": 3}}, "g.yaml: robust_eval.steps: unknown key; choose from: eps, alpha, "
                                                  "pgd_steps, subset"),
])
def test_an_unknown_key_is_refused_with_its_path(changes, line):
    assert one_problem(**changes).startswith(line)


def test_the_schema_knows_every_robust_eval_setting_a_run_takes():
    from aalr_ray.grid import RobustEval
    from aalr_ray.train import ROBUST_EVAL_DEFAULTS

    assert list(RobustEval.keys()) == list(ROBUST_EVAL_DEFAULTS)


def test_several_problems_at_every_level_are_reported_at_once_in_our_words():
    found = problems(colour="blue", epochs=2.5, seeds=[0, -1], models=["mnist1d-cnn", 7],
                     resources={"gpu": -1}, include=[{}], method_options={"aalr": {"lr": 0}},
                     overrides=[{"match": {"method": "aalr"}, "set": {"batch_size": 0}}, {"set": {"epochs": 2}}],
                     augmentations=["cutout"])
    assert sorted(found) == sorted([
        "g.yaml: colour: unknown key; valid keys: " + ", ".join(GridFile.keys()),
        "g.yaml: epochs: expected a positive integer, got 2.5",
        "g.yaml: seeds[1]: expected an integer seed in 0..2**63-1, got -1",
        "g.yaml: models[1]: expected a model name, got 7",
        "g.yaml: resources.gpu: expected a finite number >= 0 and <= 64 (fractions share a device), got -1",
        "g.yaml: include[0]: expected a non-empty mapping of dataset, model, method, seed, batch_size, augmentation, "
        "weight_decay, training, got {}",
        "g.yaml: method_options.aalr.lr: expected a finite number > 0, got 0",
        "g.yaml: overrides[0].set.batch_size: expected a positive integer, got 0",
        "g.yaml: overrides[1].match: missing (a mapping: the trials to change)",
        # a check per trial, on the valid part of the file
        "g.yaml: augmentations: 'cutout' does not apply to dataset 'mnist1d'; choose from: none, or exclude the pair",
    ])
    assert not any("pydantic" in line or "Input should" in line for line in found)


def test_an_import_path_may_name_a_dotted_attribute(tmp_path, monkeypatch):
    (tmp_path / "dotted_zoo.py").write_text("from factories import nan_model\n\n\nclass Zoo:\n"
                                            "    nan = staticmethod(nan_model)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    g = grid(models=["dotted_zoo:Zoo.nan"], seeds=1, methods=["aalr"])
    assert [c["model"] for c in expand(g)] == ["dotted_zoo:Zoo.nan"]
    assert "models[0]: model 'dotted_zoo:Zoo.missing': module 'dotted_zoo' has no attribute 'Zoo.missing'" \
        in one_problem(models=["dotted_zoo:Zoo.missing"])
    monkeypatch.delitem(sys.modules, "dotted_zoo", raising=False)


def test_importing_the_grid_module_loads_neither_torch_nor_ray():
    import subprocess

    code = "import sys, aalr_ray.grid; print([m for m in ('torch', 'ray') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]", out


# ------------------------------------------------- issue 18: how trials compute
def test_precision_and_device_are_checked_against_the_trials_gpus_with_every_other_problem():
    found = problems(precision="fp16", device="cpu", epochs=0, channels_last="sideways", methods=["aalr", "magic"])
    text = "\n".join(found)
    for fragment in ["g.yaml: precision: 'fp16' needs a CUDA GPU (its GradScaler), and the trials run on the CPU "
                     "(device cpu); choose from: auto, fp32",
                     "g.yaml: epochs: expected a positive integer, got 0",
                     "g.yaml: channels_last: unknown channels_last 'sideways'; choose from: auto, on, off",
                     "g.yaml: methods[1]: unknown method 'magic'"]:
        assert fragment in text, found
    assert len(found) == 4 and all("\n" not in p for p in found)
    assert "(resources.gpu is 0)" in one_problem(precision="fp16")  # device auto without a GPU is the CPU


@pytest.mark.parametrize("changes, line", [
    ({"device": "cuda"}, "g.yaml: device: 'cuda' needs 1 GPU per trial and resources.gpu is 0; raise resources.gpu "
                         "(a fraction shares a GPU) or choose from: auto, cpu"),
    ({"device": "cuda:1", "resources": {"cpu": 1, "gpu": 1}}, "g.yaml: device: 'cuda:1' needs 2 GPUs per trial"),
    ({"precision": "fp8"}, "g.yaml: precision: unknown precision 'fp8'; choose from: auto, fp32, bf16, fp16"),
    ({"snapshot_device": "gpu"}, "g.yaml: snapshot_device: unknown snapshot_device 'gpu'; choose from: auto, same, cpu"),
    ({"overrides": [{"match": {"method": "step"}, "set": {"precision": "fp16"}}]},
     "g.yaml: overrides[0].set.precision: 'fp16' needs a CUDA GPU"),
    ({"overrides": [{"match": {"method": "step"}, "set": {"channels_last": "maybe"}}]},
     "g.yaml: overrides[0].set.channels_last: unknown channels_last 'maybe'"),
])
def test_device_and_precision_problems_name_the_key_and_the_choices(changes, line):
    assert one_problem(**changes).startswith(line)


def test_how_trials_compute_reaches_every_trial_and_overrides_set_it_per_trial(tmp_path):
    g = grid(precision="fp16", device="cuda", resources={"cpu": 1, "gpu": 0.5}, snapshot_device="cpu",
             overrides=[{"match": {"method": "step"}, "set": {"precision": "bf16", "channels_last": "off"}}])
    configs = {c["method"]: c for c in expand(g)}
    assert {k: configs["aalr"][k] for k in ("precision", "channels_last", "snapshot_device")} == {
        "precision": "fp16", "channels_last": "auto", "snapshot_device": "cpu"}
    assert (configs["step"]["precision"], configs["step"]["channels_last"]) == ("bf16", "off")
    assert {c["precision"] for c in smoke_configs(expand(g))} <= {"auto", "bf16"}  # the smoke run is on a CPU
    job = tmp_path / "job.yaml"  # YAML 1.1 reads a bare on/off as a boolean: taken as "on"/"off"
    job.write_text(yaml.safe_dump({**BASE}) + "channels_last: on\n")
    assert {c["channels_last"] for c in expand(load_grid(job))} == {"on"}
    defaults = expand(grid())[0]
    assert (defaults["precision"], defaults["channels_last"], defaults["snapshot_device"]) == ("auto",) * 3


def test_augment_on_reaches_every_trial_and_a_bad_value_is_one_line():
    base = {"name": "g", "epochs": 1, "datasets": ["synthetic"], "models": ["small-cnn"], "methods": ["aalr"],
            "augmentations": ["standard"]}
    assert {c["augment_on"] for c in expand(parse_grid({**base, "augment_on": "device"}))} == {"device"}
    assert {c["augment_on"] for c in expand(parse_grid(base))} == {"auto"}
    with pytest.raises(GridError) as info:
        parse_grid({**base, "augment_on": "gpu"})
    assert info.value.problems == ["<grid>: augment_on: unknown augment_on 'gpu'; choose from: auto, device, workers"]
