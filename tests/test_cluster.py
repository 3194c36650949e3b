"""Cluster operations.

- ``cluster.yaml`` against Ray's own autoscaler schema (offline) and the
  safety rules: token auth on every node, the token mounted everywhere, the
  dashboard on loopback, no Ray port open to the outside, Ray pinned.
- ``ray job submit`` for real: a token-authenticated Ray head started on this
  machine (its own ports and temp dir, next to anyone else's Ray), a tiny grid
  submitted with the real CLIs, the Jobs REST API refusing requests without
  the token; the head's processes are stopped by id afterwards.
- S3 storage against a real S3 server (moto) on loopback: checkpoints and
  results in the bucket, ``--resume`` from there after an interrupted grid,
  and a wrong endpoint failing in seconds with one line.
"""

import copy
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

import s3_server
from ray_procs import BIN, free_ports, http, token_auth_head

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"
RAY_PORTS = (8265, 6379, 10001)  # dashboard/Jobs API, GCS, Ray Client: never open to the outside


def write_job(path, **fields):
    job = {"name": "tiny", "epochs": 2, "seeds": 1, "datasets": ["mnist1d"], "models": ["mnist1d-cnn"],
           "methods": ["aalr", "step"], **fields}
    path.write_text(yaml.safe_dump(job))
    return path


# ====================================================================== cluster.yaml
@pytest.fixture(scope="module")
def cluster():
    """cluster.yaml as `ray up` sees it: merged with Ray's AWS defaults."""
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))


def ray_start_options(command: str) -> dict:
    """The options of the `ray start` in a shell command, parsed by the installed `ray start` itself
    (an unknown or misspelt flag fails here, not on a fresh cluster)."""
    from ray.scripts.scripts import start

    for part in command.split(";"):
        words = shlex.split(part.replace("$RAY_HEAD_IP", "10.0.0.1"))
        if words[:2] == ["ray", "start"]:
            return start.make_context("start", words[2:]).params
    raise AssertionError(f"no `ray start` in {command!r}")


def start_commands(config: dict) -> dict[str, list[str]]:
    return {"head": config["head_start_ray_commands"], "worker": config["worker_start_ray_commands"]}


def test_cluster_yaml_validates_offline_against_rays_schema(monkeypatch):
    from ray.autoscaler._private.util import prepare_config, validate_config

    # prepare_config only merges Ray's AWS defaults (a YAML file in the wheel)
    # and fills node-type bounds; validate_config is jsonschema against
    # ray-schema.json. Neither needs AWS: no credentials, no network.
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("validating cluster.yaml tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    raw = yaml.safe_load(CLUSTER_YAML.read_text())
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    assert config["provider"]["type"] == "aws"
    for commands in start_commands(config).values():  # every `ray start` parses with this Ray
        assert any(ray_start_options(c) for c in commands if "ray start" in c)


def test_every_node_starts_ray_with_token_auth(cluster):
    for node, commands in start_commands(cluster).items():
        starts = [c for c in commands if "ray start" in c]
        assert starts, node
        for command in starts:  # set in the same shell, before `ray start`
            before = command.split("ray start")[0]
            assert "RAY_AUTH_MODE=token" in re.split(r"[\s;]+", before), (node, command)


def test_token_is_mounted_on_every_node(cluster):
    from ray._private.authentication.authentication_token_setup import _get_default_token_path

    # Global file_mounts go to the head and from there to every worker.
    mounts = cluster["file_mounts"]
    assert "~/.ray/auth_token" in mounts
    assert Path(os.path.expanduser(mounts["~/.ray/auth_token"])) == _get_default_token_path()
    # Where a node's Ray looks for it (no RAY_AUTH_TOKEN[_PATH] that would point elsewhere).
    text = CLUSTER_YAML.read_text()
    assert "RAY_AUTH_TOKEN=" not in text and "RAY_AUTH_TOKEN_PATH" not in text
    assert "chmod 600 ~/.ray/auth_token" in cluster["setup_commands"]


def test_dashboard_only_on_the_heads_loopback(cluster):
    head = [ray_start_options(c) for c in cluster["head_start_ray_commands"] if "ray start" in c]
    assert [options["dashboard_host"] for options in head] == ["127.0.0.1"]
    assert "0.0.0.0" not in json.dumps(start_commands(cluster))


def _rules(node):
    """Every ingress-like rule (a mapping with ports) anywhere in the config."""
    if isinstance(node, dict):
        if {"FromPort", "ToPort"} & node.keys() or "IpProtocol" in node:
            yield node
        for value in node.values():
            yield from _rules(value)
    elif isinstance(node, list):
        for value in node:
            yield from _rules(value)


def test_no_security_group_rule_opens_a_ray_port(cluster):
    for rule in _rules(cluster):
        low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
        everything = str(rule.get("IpProtocol")) == "-1" or low == -1
        assert not everything, f"a rule opening every port: {rule}"
        for port in RAY_PORTS:
            assert not low <= port <= high, f"a rule opening {port}: {rule}"
    # No own security groups or network interfaces: Ray's auto-created group,
    # which opens SSH and intra-cluster traffic only.
    assert not cluster["provider"].get("security_group", {}).get("IpPermissions")
    for name, node_type in cluster["available_node_types"].items():
        assert not {"SecurityGroupIds", "NetworkInterfaces", "LaunchTemplate"} & node_type["node_config"].keys(), name


def test_ray_pinned_to_the_installed_version_on_every_node(cluster):
    import ray

    pins = [c for c in cluster["setup_commands"] if f"=={ray.__version__}" in c and "ray[" in c]
    assert pins, cluster["setup_commands"]
    extras = pins[0].split("ray[", 1)[1].split("]", 1)[0].split(",")
    assert {"default", "tune", "train"} <= set(extras)  # default: the dashboard and the Jobs API
    # setup_commands run on the head and on every worker.
    assert all(pins[0] in cluster[key] for key in ("head_setup_commands", "worker_setup_commands"))
    assert not any("ray" in c and "==" in c and c != pins[0] for c in cluster["setup_commands"])


def test_cpu_head_gpu_spot_workers_s3_through_iam(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")  # no trial on the head
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers)
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in workers)
    assert all(t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for t in workers)
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values())
    assert cluster["provider"]["cache_stopped_nodes"] is False  # spot nodes cannot be stopped


def test_cluster_doc_matches_cluster_yaml(cluster):
    import ray

    doc = CLUSTER_DOC.read_text()
    for text in ("ray up cluster.yaml", "ray dashboard cluster.yaml", "ray down cluster.yaml",
                 "ray get-auth-token --generate", "RAY_AUTH_MODE=token", "http://127.0.0.1:8265",
                 "ray job logs", "aalr-ray report s3://", "--resume", "CVE-2023-48022",
                 f"ray[default]=={ray.__version__}"):
        assert text in doc, text
    for node_type in cluster["available_node_types"].values():
        assert node_type["node_config"]["IamInstanceProfile"]["Name"] in doc
        assert node_type["node_config"]["InstanceType"] in doc


# ================================================================ ray job submit
@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_to_a_token_authenticated_head(data_dir, tmp_path):
    with token_auth_head() as (url, token, env):
        # The Jobs API runs code for whoever reaches it: without the token, nothing.
        assert http(f"{url}/api/jobs/")[0] == 401
        assert http(f"{url}/api/jobs/", token="not-the-token")[0] in (401, 403)
        status, body = http(f"{url}/api/jobs/", token=token)
        assert status == 200 and json.loads(body) == []

        # Upload only the job file: aalr_ray is installed in the venv the head runs.
        job_dir = tmp_path / "job"
        job_dir.mkdir()
        write_job(job_dir / "tiny.yaml")
        results = tmp_path / "results"
        submission = f"aalr-test-{secrets.token_hex(4)}"
        submit = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", url, "--submission-id", submission, "--no-wait",
             "--working-dir", str(job_dir), "--",
             "aalr-ray", "grid", "tiny.yaml", "--smoke", "--storage", str(results), "--data-dir", data_dir],
            env=env, capture_output=True, text=True, timeout=120)
        assert submit.returncode == 0, submit.stdout + submit.stderr

        deadline = time.time() + 240
        while True:
            status, body = http(f"{url}/api/jobs/{submission}", token=token)
            assert status == 200, body
            job = json.loads(body)
            if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            assert time.time() < deadline, f"job still {job['status']}"
            time.sleep(1)
        logs = json.loads(http(f"{url}/api/jobs/{submission}/logs", token=token)[1]).get("logs", "")
        assert job["status"] == "SUCCEEDED", logs[-4000:]
        # The driver joined this head through RAY_ADDRESS (no Ray of its own):
        # the head registered it as the job's driver.
        assert job["driver_info"] and job["driver_exit_code"] == 0, job

    experiment = results / "tiny-smoke"
    trials = pq.read_table(experiment / "trials.parquet").to_pylist()
    epochs = pq.read_table(experiment / "epochs.parquet").to_pylist()
    assert sorted(t["method"] for t in trials) == ["aalr", "step"]
    assert all(t["status"] == "TERMINATED" and t["epochs_done"] == 2 for t in trials)
    assert len(epochs) == 4 and {r["trial_id"] for r in epochs} == {t["trial_id"] for t in trials}
    assert (experiment / "report.md").exists()


# ====================================================================== S3 storage
BUCKET = "aalr-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3 protocol server (moto) on loopback with one bucket: (environment, boto3 client)."""
    with s3_server.moto_s3(tmp_path_factory.mktemp("aws"), BUCKET) as server:
        yield server


def bucket_keys(client, prefix: str) -> dict[str, str]:
    """{key: etag} under a prefix."""
    return {key: item["ETag"] for key, item in s3_server.listing(client, BUCKET, prefix).items()}


def bucket_checkpoints(client, experiment_prefix: str) -> dict[str, int]:
    """Epochs checkpointed so far per trial: the newest complete checkpoint_NNNNNN index + 1."""
    done: dict[str, int] = {}
    for key in bucket_keys(client, experiment_prefix + "/"):
        parts = key[len(experiment_prefix) + 1:].split("/")
        if len(parts) == 3 and parts[1].startswith("checkpoint_") and parts[2] == "run.pt":
            done[parts[0]] = max(done.get(parts[0], 0), int(parts[1].split("_")[1]) + 1)
    return done


def read_parquet(client, key: str) -> list[dict]:
    import io

    return pq.read_table(io.BytesIO(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())).to_pylist()


@pytest.mark.ray
@pytest.mark.slow
def test_grid_on_s3_checkpoints_results_and_resume(s3, data_dir, tmp_path, monkeypatch, capsys):
    from aalr_ray.cli import main

    env_s3, client = s3
    for key, value in env_s3.items():  # for the in-process calls below
        monkeypatch.setenv(key, value)
    # Seed 0 trains 2 epochs, seed 1 twelve; the driver is interrupted once seed 1 has 3. The
    # nine epochs left (several seconds) are the margin for the signal to land on a loaded machine:
    # with five epochs, seed 1 once finished before Tune stopped it.
    job = write_job(tmp_path / "slow.yaml", name="slow", models=["factories:slow_mlp"], methods=["aalr"],
                    seeds=2, epochs=12, max_concurrent=2, overrides=[{"match": {"seed": 0}, "set": {"epochs": 2}}])
    storage, prefix = f"s3://{BUCKET}/resume", "resume/slow"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(env_s3)
    cmd = [sys.executable, "-m", "aalr_ray.cli", "grid", str(job), "--storage", storage, "--data-dir", data_dir]
    # cwd elsewhere: nothing may land in a local ./results
    driver = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        deadline = time.time() + 240
        while True:
            counts = sorted(bucket_checkpoints(client, prefix).values())
            if len(counts) == 2 and counts[0] == 2 and counts[1] >= 3:
                break
            assert driver.poll() is None, driver.stdout.read()
            assert time.time() < deadline, counts
            time.sleep(0.3)
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, output
    assert "continue with --resume" in output
    trials = read_parquet(client, f"{prefix}/trials.parquet")
    assert sorted(t["status"] for t in trials) == ["TERMINATED", "UNFINISHED"]
    finished = {k: v for k, v in bucket_keys(client, prefix + "/").items() if "-s0_" in k and "/checkpoint_" in k}
    assert finished

    # Without --resume: refused, from what is in the bucket (in-process: no Ray needed for that).
    capsys.readouterr()
    assert main(cmd[3:]) == 2 and "--resume" in capsys.readouterr().err
    resumed = subprocess.run(cmd + ["--resume"], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not (tmp_path / "results").exists()

    trials = read_parquet(client, f"{prefix}/trials.parquet")
    assert all(t["status"] == "TERMINATED" for t in trials)
    assert sorted(t["epochs_done"] for t in trials) == [2, 12]
    # The finished trial was not run again: its checkpoints are the same objects.
    assert {k: v for k, v in bucket_keys(client, prefix + "/").items()
            if "-s0_" in k and "/checkpoint_" in k} == finished
    epochs = read_parquet(client, f"{prefix}/epochs.parquet")
    assert sorted(r["epoch"] for r in epochs if r["seed"] == 1) == list(range(1, 13))  # each epoch once

    # Everything is in the bucket: the newest checkpoints of every trial (Tune
    # keeps two), TensorBoard events, Tune's state, the Parquet files and the report.
    keys = bucket_keys(client, prefix + "/")
    assert bucket_checkpoints(client, prefix) == {t["trial_name"] + "_" + t["trial_id"]: t["epochs_done"]
                                                  for t in trials}
    for trial in trials:
        directory = f"{prefix}/{trial['trial_name']}_{trial['trial_id']}"
        for epoch in (trial["epochs_done"] - 1, trial["epochs_done"]):
            for name in ("run.pt", "epochs.jsonl"):
                assert f"{directory}/checkpoint_{epoch - 1:06d}/{name}" in keys
        assert any(k.startswith(f"{directory}/events.out.tfevents.") for k in keys)
    for name in ("epochs.parquet", "trials.parquet", "report.md", "grid.json", "tuner.pkl",
                 "lr_mnist1d_natural.png"):
        assert f"{prefix}/{name}" in keys, name
    assert any(k.startswith(f"{prefix}/experiment_state-") for k in keys)
    assert not any(".aalr-ray-write-check" in k for k in keys)

    # The report rewritten from the bucket alone (how results are fetched).
    client.delete_object(Bucket=BUCKET, Key=f"{prefix}/report.md")
    assert main(["report", f"s3://{BUCKET}/{prefix}"]) == 0
    assert "| model | aalr |" in client.get_object(Bucket=BUCKET, Key=f"{prefix}/report.md")["Body"].read().decode()


def test_wrong_s3_endpoint_fails_fast_with_one_line(s3, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(s3[0], AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{free_ports(1)[0]}")  # nothing listens there
    job = write_job(tmp_path / "tiny.yaml")
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "aalr_ray.cli", "grid", str(job), "--smoke",
                             "--storage", f"s3://{BUCKET}/wrong"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert time.time() - start < 60
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"aalr-ray: error: storage 's3://{BUCKET}/wrong'"), result.stderr
    assert "Could not connect" in lines[0] or "NETWORK_CONNECTION" in lines[0]
    assert "trials ->" not in result.stdout  # stopped before Ray and before any trial


def test_storage_check_names_the_problem(s3, monkeypatch):
    from aalr_ray import storage
    from aalr_ray.storage import StorageError, check_reachable

    env, client = s3
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    check_reachable(f"s3://{BUCKET}/fine")  # reachable, writable, and leaves no probe behind
    assert not any(".aalr-ray-write-check" in k for k in bucket_keys(client, "fine/"))

    with pytest.raises(StorageError, match=r"bucket 'no-such-bucket' not found"):
        check_reachable("s3://no-such-bucket/x")
    with pytest.raises(StorageError, match="AWS_ENDPOINT_URL_S3"):
        check_reachable(f"s3://{BUCKET}/x?endpoint_override={env['AWS_ENDPOINT_URL_S3'][7:]}&scheme=http")

    # A server that accepts connections and never answers: a timeout, not a hang.
    monkeypatch.setattr(storage, "S3_CHECK_REQUEST_TIMEOUT_S", 1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        start = time.time()
        with pytest.raises(StorageError) as error:
            check_reachable(f"s3://{BUCKET}/x")
        assert time.time() - start < 15
    assert "\n" not in str(error.value) and endpoint in str(error.value)


# ================================================================ the local dashboard
DASHBOARD_PROBE = r"""
import contextlib, io, json, re, sys, time, urllib.error, urllib.request
from pathlib import Path

from aalr_ray.runner import _init_ray

printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    _init_ray(None)
lines = printed.getvalue().splitlines()
url = re.fullmatch(r"Ray dashboard: (http://127\.0\.0\.1:\d+)", lines[0]).group(1)
token = Path(re.search(r"the token in (\S+) ", lines[1]).group(1)).read_text().strip()

def status(token):
    request = urllib.request.Request(url + "/api/jobs/", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code

deadline = time.time() + 60
while True:  # the dashboard comes up a little after ray.init returns
    try:
        with_token = status(token)
        break
    except OSError:
        assert time.time() < deadline
        time.sleep(0.5)
print(json.dumps({"lines": lines, "with_token": with_token, "without": status(None)}))
"""


@pytest.mark.ray
def test_the_grid_prints_the_dashboard_and_where_its_token_is(tmp_path):
    """The two lines `aalr-ray grid` prints on its own local Ray: the token they point to opens the Jobs API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env["HOME"] = str(tmp_path)  # a fresh ~/.ray/auth_token, made by ray.init
    probe = subprocess.run([sys.executable, "-c", DASHBOARD_PROBE], env=env, capture_output=True, text=True,
                           timeout=180, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert len(result["lines"]) == 2 and f"{tmp_path}/.ray/auth_token" in result["lines"][1], result
    assert (result["with_token"], result["without"]) == (200, 401), result
