"""AALR's live state as Ray metrics, for the Prometheus and Grafana that Ray's dashboard builds on.

Every epoch, each trial (rank 0 of a data-parallel one) sets these
``ray.util.metrics`` series, tagged ``experiment``, ``trial``, ``method``,
``model`` and ``dataset``; Ray's metrics agent on the trial's node exports
them with the prefix ``ray_`` at the node's metrics export port, which the
scrape configuration Ray writes for its session
(``<temp-dir>/session_latest/metrics/prometheus/prometheus.yml``) covers:

==============================  =======  ===============================================
series, as Prometheus has it    kind     value after each epoch
==============================  =======  ===============================================
``ray_aalr_lr``                 gauge    the LR the epoch trained with (its ``lr`` row)
``ray_aalr_phase``              gauge    AALR's phase, 1 or 2 (AALR methods only)
``ray_aalr_patience``           gauge    AALR's patience p (AALR methods only)
``ray_aalr_epochs_done``        gauge    epochs trained, rolled-back ones included
``ray_aalr_train_loss``         gauge    the epoch's mean training loss (NaN shows)
``ray_aalr_test_acc``           gauge    test accuracy after the epoch
``ray_aalr_rollbacks_total``    counter  reloads of the best checkpoint so far
``ray_aalr_restarts_total``     counter  phase-1 restarts from theta_0 so far
==============================  =======  ===============================================

Every name carries ``aalr_`` so that it never mixes with another Ray
application's ``train_loss``. The counters count the trial's rows: a trial
resumed in a new process counts the rows it resumed with again, so the
counter still equals the number of rollbacks in its history (Prometheus's
``increase()`` sees the process change as a counter reset and handles it).

Monitoring never fails a trial: if a metric cannot be made or set, the
trial logs one warning line and trains on without metrics. (Outside Ray, or
on a node without a metrics agent, Ray drops the values silently; a metrics
port in use stops Ray itself from starting, before any trial.) Measured
cost: about 0.1 ms per epoch (BENCHMARKS.md, "Monitoring cost").

    metrics = TrialMetrics.for_trial(config, experiment="quickstart")
    rows = resumed_rows                  # the trial's history so far
    while training:
        rows.append(row := train_one_epoch())
        metrics.export(row, rows)        # once per epoch
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

from .errors import describe

__all__ = ["TrialMetrics", "GAUGES", "COUNTERS", "TAG_KEYS"]

log = logging.getLogger(__name__)

TAG_KEYS = ("experiment", "trial", "method", "model", "dataset")
# (metric name, row key it reads, description)
GAUGES = (("aalr_lr", "lr", "the LR of the trial's last epoch"),
          ("aalr_phase", "phase", "AALR's phase (1: finding a stable LR, 2: doubling/halving)"),
          ("aalr_patience", "patience", "AALR's patience p after the last epoch"),
          ("aalr_epochs_done", "epochs_done", "epochs trained so far, rolled-back ones included"),
          ("aalr_train_loss", "train_loss", "mean training loss of the last epoch"),
          ("aalr_test_acc", "test_acc", "test accuracy after the last epoch"))
# (metric name, the row action it counts, description)
COUNTERS = (("aalr_rollbacks", "restore_best", "reloads of the best checkpoint (divergence or a failed halving)"),
            ("aalr_restarts", "restore_initial", "phase-1 restarts from theta_0 at half the LR"))


# What this process has added to each (counter, tags) series: a trial that restarts in the same
# process (a reused actor) must not add its history twice.
_COUNTED: dict[tuple, int] = {}


@functools.lru_cache(maxsize=None)
def _ray_metrics() -> dict[str, object]:
    """The Ray metric objects, made once per process (a reused actor runs many trials)."""
    from ray.util.metrics import Counter, Gauge

    made: dict[str, object] = {}
    for name, _, description in GAUGES:
        made[name] = Gauge(name, description=description, tag_keys=TAG_KEYS)
    for name, _, description in COUNTERS:
        made[name] = Counter(name, description=description, tag_keys=TAG_KEYS)
    return made


def _number(value) -> float | None:
    """A row value as a gauge value; a NaN or infinite loss is exported as it is (divergence shows)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class TrialMetrics:
    """One trial's Ray metrics; :meth:`export` after every epoch. Never raises."""

    def __init__(self, tags: dict[str, str], make_metrics: Callable[[], dict] = _ray_metrics):
        self.tags = {key: str(tags.get(key) or "") for key in TAG_KEYS}
        self.metrics: dict | None = None
        try:
            self.metrics = make_metrics()
        except Exception as exc:
            self._give_up(exc)

    @classmethod
    def for_trial(cls, config: dict, experiment: str, **kwargs) -> "TrialMetrics":
        """Tags from a grid trial's config (``trial_name``, ``method``, ``model``, ``dataset``)."""
        tags = {"experiment": experiment, "trial": config.get("trial_name") or "",
                "method": config.get("method"), "model": config.get("model"), "dataset": config.get("dataset")}
        return cls(tags, **kwargs)

    @property
    def enabled(self) -> bool:
        return self.metrics is not None

    def _give_up(self, exc: BaseException) -> None:
        self.metrics = None
        log.warning("monitoring: Ray metrics are off for trial %s (%s); the trial trains on",
                    self.tags["trial"] or "?", describe(exc))

    def export(self, row: dict, rows: list[dict]) -> None:
        """Set the gauges from ``row`` (the epoch just trained) and bring the counters to ``rows``' totals.

        ``rows``: the trial's whole history so far, ``row`` included (after a
        resume, the resumed rows and the new ones).
        """
        if self.metrics is None:
            return
        try:
            for name, key, _ in GAUGES:
                value = _number(row.get(key))
                if value is not None:  # phase and patience exist for the AALR methods only
                    self.metrics[name].set(value, tags=self.tags)
            for name, action, _ in COUNTERS:
                series = (name, *self.tags.values())
                total = sum(1 for r in rows if r.get("action") == action)
                if total > _COUNTED.get(series, 0):  # a counter only goes up
                    self.metrics[name].inc(total - _COUNTED.get(series, 0), tags=self.tags)
                    _COUNTED[series] = total
        except Exception as exc:
            self._give_up(exc)
