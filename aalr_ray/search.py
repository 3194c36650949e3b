"""A searched baseline as Ray Tune runs it: one Tune experiment per search and grid cell.

What a Ray Tune user would do without AALR: search the LR of a standard
schedule with Tune's own tools, and pick the configuration that does best on
a validation split. For a :class:`aalr_ray.grid.SearchPlan`:

* ``scheduler: none``: ``tune.grid_search`` over the listed LRs, or
  ``samples`` draws of ``tune.loguniform``; every trial trains all epochs;
* ``asha``: the same draws under ``ASHAScheduler`` on ``val_acc``, and
  :class:`EpochBudget` ends the search once its trials trained
  ``budget_epochs`` epochs together;
* ``pbt``: ``PopulationBasedTraining`` over a ``population``, perturbing
  ``method_options.lr`` every ``perturbation_interval`` epochs; a member
  handed a better one's checkpoint continues its schedule at its new LR
  (:meth:`aalr_ray.train.TrainingRun.load_state_dict`, ``adopt_lr``).

The trials are :func:`aalr_ray.trainable.aalr_trainable` runs like the
grid's, so every one of them writes its rows (with ``val_acc`` and the LR
of each epoch) and checkpoints every epoch, and an interrupted search
resumes. Draws are seeded from the cell's seed, so a search draws the same
LRs when it runs again.
"""

from __future__ import annotations

from ray import tune
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator

from .data.spec import mix_seed
from .grid import SearchPlan

__all__ = ["EpochBudget", "SELECT_METRIC", "search_param_space", "search_tune_config", "keep_checkpoints"]

SELECT_METRIC = "val_acc"  # what the schedulers compare and what selects (never the test split)
_DRAW_STREAM = 0x6C72  # "lr": the seed of a search's LR draws, apart from the data's streams


class EpochBudget(tune.Stopper):
    """Ends the experiment once its trials trained ``budget`` epochs together (each trial's
    ``epochs_done``, its own count, which a restore does not rewind)."""

    def __init__(self, budget: int):
        self.budget = budget
        self.done: dict[str, int] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.done[trial_id] = max(self.done.get(trial_id, 0), int(result.get("epochs_done", 0)))
        return False

    def stop_all(self) -> bool:
        return sum(self.done.values()) >= self.budget


def _lr_domain(space: dict):
    if "grid" in space:
        return tune.choice(space["grid"])
    low, high = space["loguniform"]
    return tune.loguniform(low, high)


def search_param_space(plan: SearchPlan) -> dict:
    """The trial config with ``method_options.lr`` as Tune's search space."""
    space, options = plan.spec["lr"], dict(plan.config["method_options"])
    if "grid" in space and plan.spec["scheduler"] != "pbt":
        options["lr"] = tune.grid_search(space["grid"])
    else:
        options["lr"] = _lr_domain(space)
    return {**plan.config, "method_options": options}


def search_tune_config(plan: SearchPlan, max_concurrent: int | None) -> tune.TuneConfig:
    """Tune's search algorithm, scheduler and sample count for ``plan``."""
    spec = plan.spec
    samples = spec["population"] if spec["scheduler"] == "pbt" else spec.get("samples", 1)
    scheduler = None
    if spec["scheduler"] == "asha":
        scheduler = ASHAScheduler(time_attr="epochs_done", metric=SELECT_METRIC, mode="max",
                                  max_t=plan.config["epochs"], grace_period=spec["grace_period"],
                                  reduction_factor=spec["reduction_factor"])
    elif spec["scheduler"] == "pbt":
        scheduler = PopulationBasedTraining(
            time_attr="epochs_done", metric=SELECT_METRIC, mode="max",
            perturbation_interval=spec["perturbation_interval"],
            hyperparam_mutations={"method_options": {"lr": _lr_domain(spec["lr"])}})
    seed = mix_seed(plan.config["seed"], _DRAW_STREAM) % 2**32
    # Tune ignores max_concurrent_trials beside a BasicVariantGenerator: the generator limits them.
    return tune.TuneConfig(
        num_samples=samples, scheduler=scheduler, reuse_actors=True,
        search_alg=BasicVariantGenerator(max_concurrent=max_concurrent or 0, random_state=seed),
        trial_dirname_creator=lambda trial: f"{plan.search}_{trial.trial_id}",
        trial_name_creator=lambda trial: f"{plan.config['trial_name']}_{trial.trial_id}")


def search_stopper(plan: SearchPlan) -> EpochBudget | None:
    return EpochBudget(plan.spec["budget_epochs"]) if plan.spec["scheduler"] == "asha" else None


def keep_checkpoints(plan: SearchPlan, default: int) -> int:
    """Checkpoints kept per trial: PBT clones a member's latest one up to an interval after it was
    written, so it keeps more than that."""
    if plan.spec["scheduler"] == "pbt":
        return max(default, 2 * plan.spec["perturbation_interval"] + 1)
    return default
