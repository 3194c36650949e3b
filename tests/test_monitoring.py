"""AALR's live state as Ray metrics: the exporter's contract, and a real Prometheus scraping a real grid."""

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from aalr_ray import metrics as aalr_metrics
from aalr_ray.metrics import COUNTERS, GAUGES, TrialMetrics

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
GRAFANA_PANEL = Path(__file__).resolve().parent.parent / "docs" / "grafana-aalr.json"
EXPORTED = {f"ray_{name}" for name, _, _ in GAUGES} | {f"ray_{name}_total" for name, _, _ in COUNTERS}


def panel_queries(experiment: str) -> list[str]:
    """Every PromQL query of the shipped Grafana dashboard, for one experiment."""
    dashboard = json.loads(GRAFANA_PANEL.read_text())
    return [target["expr"].replace("$experiment", experiment)
            for panel in dashboard["panels"] for target in panel["targets"]]


# ------------------------------------------------------------ the exporter
class Recorded:
    """A stand-in for one Ray Gauge or Counter: every call, in order."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def set(self, value, tags):
        if self.fail:
            raise OSError("metrics agent unreachable")
        self.calls.append(("set", value, dict(tags)))

    def inc(self, value, tags):
        self.calls.append(("inc", value, dict(tags)))


def recorder(fail_on: str | None = None):
    made = {name: Recorded(fail=name == fail_on) for name, _, _ in GAUGES + COUNTERS}
    return made, lambda: made


def aalr_row(epoch, lr, action="continue", phase=2, patience=1):
    return {"epoch": epoch, "epochs_done": epoch, "lr": lr, "train_loss": 1.0 / epoch, "test_acc": 0.5,
            "phase": phase, "patience": patience, "action": action}


@pytest.fixture(autouse=True)
def fresh_counts(monkeypatch):
    monkeypatch.setattr(aalr_metrics, "_COUNTED", {})


def test_every_gauge_reads_its_row_and_carries_the_trial_tags():
    made, make = recorder()
    config = {"trial_name": "mnist1d-cnn-aalr-s0", "method": "aalr", "model": "mnist1d-cnn", "dataset": "mnist1d"}
    metrics = TrialMetrics.for_trial(config, "quickstart", make_metrics=make)
    row = aalr_row(3, 0.2, patience=2)
    metrics.export(row, [row])
    tags = {"experiment": "quickstart", "trial": "mnist1d-cnn-aalr-s0", "method": "aalr", "model": "mnist1d-cnn",
            "dataset": "mnist1d"}
    for name, key, _ in GAUGES:
        assert made[name].calls == [("set", float(row[key]), tags)], name


def test_a_method_without_aalr_state_sets_no_phase_or_patience():
    made, make = recorder()
    metrics = TrialMetrics({"trial": "step"}, make_metrics=make)
    row = {"epoch": 1, "epochs_done": 1, "lr": 0.1, "train_loss": 2.0, "test_acc": 0.1, "phase": None,
           "patience": None, "action": None}
    metrics.export(row, [row])
    assert made["aalr_phase"].calls == [] and made["aalr_patience"].calls == []
    assert [c[1] for c in made["aalr_lr"].calls] == [0.1]


def test_counters_equal_the_rollbacks_and_restarts_in_the_rows_so_far():
    made, make = recorder()
    metrics = TrialMetrics({"trial": "t"}, make_metrics=make)
    actions = ["restore_initial", "continue", "restore_initial", "save_best", "restore_best", "continue"]
    rows = []
    for epoch, action in enumerate(actions, 1):
        rows.append(aalr_row(epoch, 0.1, action))
        metrics.export(rows[-1], rows)
    assert sum(c[1] for c in made["aalr_restarts"].calls) == 2
    assert sum(c[1] for c in made["aalr_rollbacks"].calls) == 1


def test_a_resumed_trial_counts_its_history_once_per_process():
    """A new process counts the rows it resumed with; the same process restarting the trial does not add them again."""
    made, make = recorder()
    history = [aalr_row(1, 0.1, "restore_initial"), aalr_row(2, 0.05, "restore_best")]
    first = TrialMetrics({"trial": "t"}, make_metrics=make)
    first.export(history[-1], history)
    again = TrialMetrics({"trial": "t"}, make_metrics=make)  # the trial restarted in this same (reused) actor
    rows = history + [aalr_row(3, 0.025, "restore_best")]
    again.export(rows[-1], rows)
    assert sum(c[1] for c in made["aalr_restarts"].calls) == 1
    assert sum(c[1] for c in made["aalr_rollbacks"].calls) == 2


def test_an_export_that_fails_warns_once_and_never_raises(caplog):
    made, make = recorder(fail_on="aalr_lr")
    metrics = TrialMetrics({"trial": "t"}, make_metrics=make)
    with caplog.at_level(logging.WARNING, logger="aalr_ray.metrics"):
        for epoch in (1, 2, 3):
            row = aalr_row(epoch, 0.1)
            metrics.export(row, [row])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "trial t" in warnings[0] and "metrics agent unreachable" in warnings[0]
    assert not metrics.enabled and made["aalr_test_acc"].calls == []


def test_metrics_that_cannot_be_made_warn_once_and_the_exporter_is_a_no_op(caplog):
    def no_agent():
        raise RuntimeError("no metrics agent")

    with caplog.at_level(logging.WARNING, logger="aalr_ray.metrics"):
        metrics = TrialMetrics({"trial": "t"}, make_metrics=no_agent)
        metrics.export(aalr_row(1, 0.1), [aalr_row(1, 0.1)])
    assert not metrics.enabled
    assert [r.getMessage() for r in caplog.records] == [
        "monitoring: Ray metrics are off for trial t (RuntimeError: no metrics agent); the trial trains on"]


def test_the_grafana_dashboard_reads_only_series_the_trials_export():
    dashboard = json.loads(GRAFANA_PANEL.read_text())
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    queries = panel_queries("x")
    assert len(queries) >= 7
    named = {name for query in queries for name in re.findall(r"\bray_[a-z_]+", query)}
    assert named <= EXPORTED, named - EXPORTED
    assert {"ray_aalr_lr", "ray_aalr_phase", "ray_aalr_rollbacks_total", "ray_aalr_epochs_done"} <= named


# ------------------------------------------------- a real Prometheus scrape
def free_port() -> int:
    from ray_procs import free_ports

    return free_ports(1)[0]


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.time() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def metrics_ray():
    """An embedded Ray with its dashboard (which writes the Prometheus scrape configuration) and its
    metrics export on a free port, in a temp dir of its own; workers report metrics every 0.5 s."""
    import ray

    os.environ["RAY_metrics_report_interval_ms"] = "500"
    temp_dir = tempfile.mkdtemp(prefix="aalrm", dir="/tmp")  # short: Ray's socket paths have a length limit
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=True, _temp_dir=temp_dir,
                 _metrics_export_port=free_port(), log_to_driver=False, configure_logging=False)
        yield Path(temp_dir)
    finally:
        ray.shutdown()
        os.environ.pop("RAY_metrics_report_interval_ms", None)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def prometheus(metrics_ray, tmp_path):
    """A real Prometheus on loopback with Ray's scrape configuration (scraping every second), stopped by pid."""
    if not Path(PROMETHEUS).exists():
        pytest.skip("LOUD SKIP: no prometheus binary: `apt-get install -y prometheus` "
                    "(.ci/run installs it) to run the real-scrape test")
    ray_config = metrics_ray / "session_latest" / "metrics" / "prometheus" / "prometheus.yml"
    wait_for(ray_config.exists, 60, f"Ray's scrape configuration {ray_config}")
    config = yaml.safe_load(ray_config.read_text())
    config["global"]["scrape_interval"] = "1s"  # Ray's is 10 s, longer than this test's trials
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address={url.removeprefix('http://')}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    try:
        wait_for(lambda: _get(f"{url}/-/ready") is not None, 60, "Prometheus to be ready")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except OSError:
        return None


def query(prometheus_url: str, promql: str, at: float | None = None) -> dict:
    """Prometheus's answer to an instant query (its ``data``; at time ``at``), after checking it succeeded."""
    when = "" if at is None else f"&time={at}"
    body = _get(f"{prometheus_url}/api/v1/query?query={urllib.parse.quote(promql)}{when}")
    assert body is not None, promql
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]


def samples(prometheus_url: str, promql: str) -> dict[str, list[tuple[float, float]]]:
    """{trial tag: [(time, value), ...]} of a range-vector query, over every series of the trial."""
    found: dict[str, list] = {}
    for series in query(prometheus_url, promql)["result"]:
        found.setdefault(series["metric"]["trial"], []).extend((float(t), float(v)) for t, v in series["values"])
    return {trial: sorted(values) for trial, values in found.items()}


@pytest.mark.ray
@pytest.mark.slow
def test_prometheus_scrapes_every_trials_lr_as_its_rows_show(prometheus, data_dir, tmp_path):
    from aalr_ray.runner import run_grid

    job = tmp_path / "monitored.yaml"
    job.write_text(yaml.safe_dump({"name": "monitored", "epochs": 40, "seeds": 1, "datasets": ["mnist1d"],
                                   "models": ["mnist1d-cnn"], "methods": ["aalr", "step"], "max_concurrent": 2}))
    experiment, collected = run_grid(str(job), storage=str(tmp_path / "results"), data_dir=data_dir)
    assert collected.complete
    trials = pq.read_table(Path(experiment) / "trials.parquet").to_pylist()
    epochs = pq.read_table(Path(experiment) / "epochs.parquet").to_pylist()
    lrs = {t["trial_name"]: [r["lr"] for r in sorted((r for r in epochs if r["trial_id"] == t["trial_id"]),
                                                      key=lambda r: r["epoch"])] for t in trials}

    selector = '{experiment="monitored"}[10m]'
    lr = wait_for(lambda: (found := samples(prometheus, "ray_aalr_lr" + selector)).keys() == lrs.keys() and found,
                  30, "both trials' ray_aalr_lr in Prometheus")
    done = samples(prometheus, "ray_aalr_epochs_done" + selector)
    for trial, rows_lr in lrs.items():
        epochs_at = dict(done[trial])
        paired = [(epochs_at[t], value) for t, value in lr[trial] if t in epochs_at]
        assert len(paired) >= 2, (trial, paired)  # scraped while the trial ran, not once at its end
        for epochs_done, value in paired:
            # The two gauges are set one after the other: a report can fall between them.
            assert value in rows_lr[int(epochs_done) - 1:int(epochs_done) + 1], (trial, epochs_done, value)
    phase = samples(prometheus, "ray_aalr_phase" + selector)
    assert list(phase) == [t["trial_name"] for t in trials if t["method"] == "aalr"]  # step has no phase

    # The shipped Grafana dashboard's queries are valid PromQL on the real series (a query
    # Prometheus rejects fails `query`), and its LR panel shows each trial while it ran.
    queries = panel_queries("monitored")
    for promql in queries:
        query(prometheus, promql)
    for trial, values in lr.items():
        shown = query(prometheus, queries[0], at=values[-1][0])["result"]
        assert trial in {series["metric"]["trial"] for series in shown}, (trial, shown)
