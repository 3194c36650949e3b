"""Grid files: expansion is a pure function; every validation error is reported at once."""

from pathlib import Path

import pytest
import yaml

from aalr_ray.attacks import AttackConfig
from aalr_ray.grid import GridError, expand, load_grid, parse_grid, smoke_configs
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
                     "seeds: repeated seeds",
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
    assert any("cannot import 'factories:no_such_thing'" in p for p in found)
    assert any("cannot import 'nowhere.module:make'" in p for p in found)


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
