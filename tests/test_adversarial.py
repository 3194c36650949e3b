"""Adversarial training through the training run: AALR judges the adversarial loss,
and an FGSM-trained model is more robust than a naturally trained one."""

import pytest

from aalr_ray.train import RunConfig, TrainingRun

EPS = 0.1  # digits pixels are in [0, 1]; 0.1 is 1.6 of the 16 grey levels


def run(training, method="aalr", epochs=15):
    config = RunConfig(model="small-cnn", dataset="digits", method=method, epochs=epochs, batch_size=64,
                       training=training, robust_eval={"eps": EPS, "subset": 360})
    training_run = TrainingRun(config)
    return training_run, list(training_run)


@pytest.fixture(scope="module")
def natural():
    return run("natural")


@pytest.fixture(scope="module")
def fgsm_trained():
    return run(f"fgsm:eps={EPS}")


def test_fgsm_training_is_more_robust_on_the_same_budget(natural, fgsm_trained):
    (_, nat_rows), (_, adv_rows) = natural, fgsm_trained
    assert adv_rows[-1]["fgsm_acc"] > nat_rows[-1]["fgsm_acc"] + 0.2
    assert adv_rows[-1]["pgd_acc"] > nat_rows[-1]["pgd_acc"] + 0.2
    assert adv_rows[-1]["test_acc"] > 0.9  # and it still classifies clean digits


def test_aalr_judges_the_adversarial_training_loss(natural, fgsm_trained):
    (nat_run, nat_rows), (adv_run, adv_rows) = natural, fgsm_trained
    assert adv_run.initial_loss > nat_run.initial_loss  # J(theta_0) measured under the attack
    # The loss AALR's core compares is the adversarial epoch loss.
    assert adv_rows[0]["best_loss"] == adv_rows[0]["train_loss"]
    assert adv_rows[-1]["train_loss"] > nat_rows[-1]["train_loss"]


@pytest.mark.parametrize("method", ["step", "adam", "prodigy"])
def test_every_method_takes_the_adversarial_seam(method):
    training_run, rows = run("pgd:eps=0.1,alpha=0.025,steps=3", method=method, epochs=2)
    assert {"fgsm_acc", "pgd_acc"} <= rows[-1].keys()
    assert training_run.make_inputs is not None and rows[-1]["pgd_acc"] <= rows[-1]["test_acc"]


def test_robust_metrics_reach_the_summary(fgsm_trained):
    training_run, rows = fgsm_trained
    summary = training_run.summary()
    assert summary["final_fgsm_acc"] == rows[-1]["fgsm_acc"]  # same weights, same random starts
    assert summary["final_pgd_acc"] == rows[-1]["pgd_acc"]
