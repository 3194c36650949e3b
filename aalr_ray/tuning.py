"""What a searched baseline costs and what it selects: pure functions on the result tables.

Free of Ray and torch, like the report that uses it. A *search group* is the
trials of one search over one grid cell (the same ``trial_name``: search
name + cell); its accounting:

* the configuration it selects: the trial with the highest validation
  accuracy at its last epoch (ties: lower validation loss, then the earlier
  trial); the test split never selects;
* its compute: the epochs all its trials trained, early-stopped ones
  counted as far as they trained, and the seconds they took;
* its curve, accuracy against compute as the search's budget grows
  (:func:`budget_curve`).

For AALR the compute is its own epochs, rolled-back ones included: every
trained epoch is a row.

Example, a 3-LR grid search over 10-epoch runs::

    >>> trials = [{"trial_id": "a", "trial_name": "g-c", "search": "g", "epochs_done": 10,
    ...            "final_val_acc": 0.7, "final_test_acc": 0.69, "wall_s": 2.0}, ...]
    >>> select(trials)                  # {"b"}: the best on validation
    >>> search_compute(trials)          # {"g-c": (30, 6.1)}: epochs, trial seconds
"""

from __future__ import annotations

import math
from collections import defaultdict

__all__ = ["group_key", "groups", "select", "search_compute", "budget_curve", "mark_selected"]

def group_key(trial: dict) -> str:
    """The search group of a search trial (its trial name: the search's and the cell's)."""
    return trial["trial_name"]


def groups(trials: list[dict]) -> dict[str, list[dict]]:
    """Search trials by group, in table order; trials of no search are left out."""
    found: dict[str, list[dict]] = defaultdict(list)
    for trial in trials:
        if trial.get("search"):
            found[group_key(trial)].append(trial)
    return dict(found)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _rank(trial: dict, index: int) -> tuple:
    """Sort key, best first: validation accuracy, then loss; a trial without them comes last."""
    acc, loss = trial.get("final_val_acc"), trial.get("final_val_loss")
    return (-(acc if _finite(acc) else -1.0), loss if _finite(loss) else math.inf, index)


def best_on_validation(trials: list[dict]) -> dict | None:
    """The trial a search selects among ``trials`` (None when none trained an epoch)."""
    trained = [(t, i) for i, t in enumerate(trials) if (t.get("epochs_done") or 0) > 0]
    if not trained:
        return None
    return min(trained, key=lambda pair: _rank(*pair))[0]


def select(trials: list[dict]) -> set:
    """The ``trial_id`` each search group selects."""
    chosen = (best_on_validation(group) for group in groups(trials).values())
    return {trial["trial_id"] for trial in chosen if trial is not None}


def mark_selected(trials: list[dict]) -> None:
    """Set ``selected`` on every search trial (in place); other trials get None."""
    chosen = select(trials)
    for trial in trials:
        trial["selected"] = (trial["trial_id"] in chosen) if trial.get("search") else None


def search_compute(trials: list[dict]) -> dict[str, tuple[int, float]]:
    """Per search group: (epochs trained by all its trials, their seconds of training and evaluation)."""
    return {key: (sum(int(t.get("epochs_done") or 0) for t in group),
                  sum(float(t.get("wall_s") or 0.0) for t in group))
            for key, group in groups(trials).items()}


def _last_rows(rows: list[dict]) -> dict[int, dict]:
    return {int(row["epoch"]): row for row in rows}


def budget_curve(scheduler: str, group: list[dict], rows_by_trial: dict[str, list[dict]]) -> list[tuple[int, float]]:
    """(epochs trained, test accuracy of the configuration selected with that budget), growing.

    * ``none`` (every configuration trains all epochs): the expectation over
      which k of its n configurations a search of k would have tried, for
      k = 1..n. With the configurations ranked by validation accuracy, the
      i-th best (0-based) is the best of a random k-subset with probability
      C(n-1-i, k-1) / C(n, k); this does not depend on the order of the grid.
    * ``asha``: its first k trials in the order Tune started them (ASHA's
      promotions depend on that order), for k = 1..n; epochs: what those
      trials trained.
    * ``pbt``: the population after t epochs each, for t = 1..T; the member
      best on validation at epoch t, judged on the rows each member ended
      with (a member that copied a better one carries that one's history).
    """
    if scheduler == "pbt":
        return _pbt_curve(group, rows_by_trial)
    trained = [t for t in group if (t.get("epochs_done") or 0) > 0]
    if not trained:
        return []
    if scheduler == "asha":
        points = []
        for k in range(1, len(trained) + 1):
            chosen = best_on_validation(trained[:k])
            points.append((sum(int(t["epochs_done"]) for t in trained[:k]), float(chosen["final_test_acc"])))
        return points
    ranked = [trained[i] for i in sorted(range(len(trained)), key=lambda i: _rank(trained[i], i))]
    n, epochs = len(ranked), sum(int(t["epochs_done"]) for t in ranked) / len(ranked)
    points = []
    for k in range(1, n + 1):
        expected = sum(math.comb(n - 1 - i, k - 1) * float(t["final_test_acc"]) for i, t in enumerate(ranked))
        points.append((round(k * epochs), expected / math.comb(n, k)))
    return points


def _pbt_curve(group: list[dict], rows_by_trial: dict[str, list[dict]]) -> list[tuple[int, float]]:
    histories = [_last_rows(rows_by_trial.get(t["trial_id"], [])) for t in group]
    histories = [h for h in histories if h]
    if not histories:
        return []
    points = []
    for epoch in range(1, min(max(h) for h in histories) + 1):
        at = [h[epoch] for h in histories if epoch in h]
        best = min(range(len(at)), key=lambda i: _rank({"final_val_acc": at[i].get("val_acc"),
                                                        "final_val_loss": at[i].get("val_loss")}, i))
        points.append((epoch * len(at), float(at[best]["test_acc"])))
    return points
