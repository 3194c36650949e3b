"""Real Ray processes on this machine for the cluster tests, next to anyone else's Ray.

Everything is started with the virtualenv's own ``ray start`` on explicit ports
and its own short temp dir under /tmp, and stopped by process id (never
``ray stop``: it kills every Ray on the machine, other people's included).

- ``token_auth_head()``: one token-authenticated head (2 CPUs) with the Jobs API.
- ``ray_cluster(worker_nodes)``: a token-authenticated head with no CPU (it
  trains nothing, as in cluster.yaml) and one real worker node (raylet) per
  entry, each with its own temp dir and ports; kill a node, add one, submit
  jobs and find their driver processes.
- ``autoscaling_cluster(worker_types, idle_timeout_minutes)``: a head running
  Ray's autoscaler with the fake multi-node provider, which starts and stops
  worker raylets on this machine as the load asks.

All nodes share one IP address (Ray reports the machine's, not 127.0.0.1): tell them apart
by node id. A node's processes are
those naming its temp dir in their command line, and their descendants
(workers are children of the raylet).
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent  # the virtualenv's ray and aalr-ray

# GCS health checks of the raylets (read by gcs_server, so set on the head). With Ray's
# defaults a SIGKILLed worker node was reported DEAD after 15.6 s; with these after 1.1-1.5 s
# (4.9 s once, under a load of 7 on 2 cores): a killed raylet refuses connections, so each
# check fails at once. The timeout stays generous: a raylet that is merely slow on a loaded
# 2-core machine must not be declared dead (a raylet the GCS declares dead exits).
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "3000",
                   "RAY_health_check_failure_threshold": "3"}
# Per-node object store: small and fixed, rather than 30% of the machine's memory per node.
OBJECT_STORE_BYTES = 128 * 1024 * 1024
JOB_DONE = ("SUCCEEDED", "FAILED", "STOPPED")


def free_ports(count: int) -> list[int]:
    """Distinct ports free right now (all bound at once, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _processes_naming(names) -> list:
    """The processes whose command line ``names(argument)`` for some argument, and their
    descendants (workers, job drivers); never this process."""
    import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
    import psutil

    found = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(names(arg) for arg in proc.info["cmdline"] or []):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def _names_dir(arg: str, temp_dir: str) -> bool:
    return arg.endswith(temp_dir) or f"{temp_dir}/" in arg


def head_processes(temp_dir: str, gcs_port: int) -> list:
    """This head's processes, by what is ours alone: the temp dir or the GCS port in
    their command line (the Ray Client server names only the GCS address), and
    their descendants (workers, job drivers)."""
    return _processes_naming(lambda arg: _names_dir(arg, temp_dir)
                             or (arg.startswith("--") and arg.endswith(f":{gcs_port}")))


def living(procs: list) -> list:
    """The processes still running (an exited child of init may stay a zombie here: it is gone)."""
    import psutil

    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            pass
    return alive


def stop_head(temp_dir: str, gcs_port: int) -> list:
    """Stop exactly this head's processes, by id (never `ray stop`: it kills every Ray on the
    machine); remove its temp dir. Returns the processes that would not stop."""
    import psutil

    for _ in range(3):  # a raylet may still spawn a worker while we stop
        procs = living(head_processes(temp_dir, gcs_port))
        if not procs:
            break
        for proc in procs:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        # A short grace: gcs_server and raylet drain for 10 s and more on
        # SIGTERM, and a test head has nothing worth draining.
        deadline = time.time() + 3
        while living(procs) and time.time() < deadline:
            time.sleep(0.2)
        for proc in living(procs):
            try:
                proc.kill()
            except psutil.Error:
                pass
    leftover = living(head_processes(temp_dir, gcs_port))
    # A stale ray_current_cluster makes a later ray.init() try to join this dead head.
    Path(temp_dir, "ray_current_cluster").unlink(missing_ok=True)
    shutil.rmtree(temp_dir, ignore_errors=True)
    return leftover


@contextmanager
def token_auth_head():
    """A Ray head on this machine with token authentication, on ports of its own."""
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Unix socket paths end up under it
    token = secrets.token_hex(32)
    token_file = Path(temp_dir, "auth_token")
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    # The venv first on PATH: the head's Python is the venv's, and a job's
    # driver (which inherits the raylet's environment) finds aalr-ray.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    gcs, dashboard, node_manager, object_manager, client, agent_http, agent_grpc, runtime_env, metrics = \
        free_ports(9)
    # Every port explicit: a second head left to the defaults moves some of
    # them silently (the dashboard to 8266) and collides with others. Worker
    # ports 0..0: the OS picks them.
    command = [str(BIN / "ray"), "start", "--head", f"--port={gcs}", f"--temp-dir={temp_dir}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2", "--num-gpus=0",
               f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
               f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
               "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats"]
    from ray._private.utils import get_ray_client_dependency_error

    if get_ray_client_dependency_error() is None:  # a Ray Client server starts only with ray[client]
        command.append(f"--ray-client-server-port={client}")
    try:
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        url = f"http://127.0.0.1:{dashboard}"
        deadline = time.time() + 60
        while True:  # the dashboard comes up a little after `ray start` returns
            try:
                http(f"{url}/api/jobs/")
                break
            except OSError:
                assert time.time() < deadline, "the dashboard did not come up"
                time.sleep(0.5)
        yield url, token, env
    finally:
        leftover = stop_head(temp_dir, gcs)
    assert not leftover, leftover  # reached only when the test itself passed


# ============================================================== multi-node clusters
def node_processes(temp_dir: str) -> list:
    """One node's processes: those naming its temp dir (raylet, log monitor, and on the head
    gcs_server and the dashboard), and their descendants (agents, workers, job drivers)."""
    return _processes_naming(lambda arg: _names_dir(arg, temp_dir))


def _raylet_node_id(temp_dir: str) -> str | None:
    """The node id on the command line of the raylet of this temp dir (`--node_id=<hex>`)."""
    for proc in node_processes(temp_dir):
        try:
            cmdline = proc.cmdline()
        except Exception:
            continue
        if cmdline and cmdline[0].endswith("/raylet"):
            for arg in cmdline:
                if arg.startswith("--node_id="):
                    return arg.split("=", 1)[1]
    return None


def raylet_process(node_id: str, among: list):
    """The raylet started for this node id (`--node_id=<hex>` on its command line) among these
    processes. Look among one cluster's only: the fake provider's node ids (fff...00001, ...)
    are the same in every autoscaling cluster on the machine."""
    for proc in among:
        try:
            cmdline = proc.cmdline()
        except Exception:
            continue
        if cmdline and cmdline[0].endswith("/raylet") and f"--node_id={node_id}" in cmdline:
            return proc
    return None


def _base_env(token_file: Path, env: dict | None) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    base.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
                PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    base.update(env or {})
    return base


@dataclass
class WorkerNode:
    """A worker node: `ray start --address=...` with its own temp dir and ports."""
    name: str
    temp_dir: str
    node_id: str
    resources: dict  # what the node offers: {"CPU": n, <custom>: x}
    ports: dict
    env: dict = field(repr=False, default_factory=dict)
    killed: bool = False

    def processes(self) -> list:
        return node_processes(self.temp_dir)

    def raylet_pid(self) -> int | None:
        for proc in self.processes():
            try:
                if proc.cmdline()[0].endswith("/raylet"):
                    return proc.pid
            except Exception:
                continue
        return None


class RayCluster:
    """Handle yielded by `ray_cluster`: addresses, token, client env, nodes, jobs."""

    def __init__(self, root: str, token: str, token_file: Path, env: dict, gcs_port: int, dashboard_port: int,
                 node_env: dict):
        self.root, self.token, self.token_file = root, token, token_file
        self.env = env  # what a client (ray job submit, a driver) needs
        self.gcs_port = gcs_port
        self.gcs_address = f"127.0.0.1:{gcs_port}"
        self.url = f"http://127.0.0.1:{dashboard_port}"
        self.head_temp_dir = str(Path(root, "h"))
        self.head_node_id: str | None = None
        self.nodes: list[WorkerNode] = []
        self._node_env = node_env  # base environment of every node's `ray start`
        self._count = 0

    # ------------------------------------------------------------------ REST
    def get(self, path: str):
        """GET a dashboard REST path with the token; the decoded JSON."""
        status, body = http(self.url + path, token=self.token)
        assert status == 200, (path, status, body[:2000])
        return json.loads(body)

    def node_states(self) -> dict[str, str]:
        """{node id: "ALIVE" | "DEAD"} for every node the GCS knows (state API)."""
        result = self.get("/api/v0/nodes?limit=10000&detail=true")["data"]["result"]["result"]
        return {n["node_id"]: n["state"] for n in result}

    def alive_node_ids(self) -> set[str]:
        """Node ids the GCS reports ALIVE (the head included)."""
        return {node_id for node_id, state in self.node_states().items() if state == "ALIVE"}

    def alive_worker_count(self) -> int:
        return len(self.alive_node_ids() - {self.head_node_id})

    def wait_nodes(self, predicate, timeout: float, what: str) -> float:
        """Poll node states until predicate(states) holds; the seconds it took."""
        start = time.time()
        while True:
            states = self.node_states()
            if predicate(states):
                return time.time() - start
            assert time.time() - start < timeout, f"{what}: not within {timeout} s: {states}"
            time.sleep(0.2)

    # ----------------------------------------------------------------- nodes
    def add_node(self, spec: dict) -> WorkerNode:
        """Start one worker node ({"cpus": 1, "resources": {...}, "env": {...}}) and wait until
        the GCS reports it alive."""
        return self.add_nodes([spec])[0]

    def add_nodes(self, specs: list[dict], wait: bool = True) -> list[WorkerNode]:
        """Start worker nodes, their `ray start`s all at once, and (wait) until the GCS reports
        each alive (through the dashboard)."""
        launched = []
        names = ("node_manager", "object_manager", "metrics", "agent_http", "agent_grpc", "runtime_env")
        all_ports = free_ports(len(names) * len(specs))  # at once: the nodes bind theirs only later
        for i, spec in enumerate(specs):
            name = f"w{self._count}"
            self._count += 1
            temp_dir = str(Path(self.root, name))
            ports = dict(zip(names, all_ports[i * len(names):(i + 1) * len(names)]))
            resources = dict(spec.get("resources", {}))
            command = [str(BIN / "ray"), "start", f"--address={self.gcs_address}", f"--temp-dir={temp_dir}",
                       f"--num-cpus={spec.get('cpus', 1)}", f"--num-gpus={spec.get('gpus', 0)}",
                       f"--resources={json.dumps(resources)}",
                       f"--object-store-memory={spec.get('object_store_memory', OBJECT_STORE_BYTES)}",
                       f"--node-manager-port={ports['node_manager']}",
                       f"--object-manager-port={ports['object_manager']}",
                       f"--metrics-export-port={ports['metrics']}",
                       f"--dashboard-agent-listen-port={ports['agent_http']}",
                       f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
                       f"--runtime-env-agent-port={ports['runtime_env']}",
                       "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats"]
            process = subprocess.Popen(command, env={**self._node_env, **spec.get("env", {})},
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            node = WorkerNode(name, temp_dir, "", {"CPU": spec.get("cpus", 1), **resources}, ports,
                              spec.get("env", {}))
            launched.append((node, process))
        nodes = []
        for node, process in launched:
            output, _ = process.communicate(timeout=120)
            assert process.returncode == 0, output
            node.node_id = _raylet_node_id(node.temp_dir)
            assert node.node_id, f"no raylet for {node.temp_dir}"
            self.nodes.append(node)
            nodes.append(node)
        if wait:
            self.wait_nodes(lambda states: all(states.get(n.node_id) == "ALIVE" for n in nodes), 60,
                            "nodes alive")
        return nodes

    def kill_node(self, node: "WorkerNode | str", timeout: float = 60) -> float:
        """SIGKILL a node as if its machine died, and wait until the GCS reports it DEAD. A
        WorkerNode: everything of its temp dir (raylet, log monitor) and under it (agents,
        workers). A node id (e.g. a node the autoscaler started, which shares the head's temp
        dir): the raylet with that `--node_id` and everything under it. Nothing else is touched.
        Returns the seconds from the kill to the GCS reporting the node dead."""
        if isinstance(node, WorkerNode):
            procs, node_id, name = living(node.processes()), node.node_id, node.name
            assert any(p.pid == node.raylet_pid() for p in procs), f"{name} has no raylet"
        else:
            node_id = name = node
            raylet = raylet_process(node_id, self.processes())
            assert raylet is not None, f"no raylet with --node_id={node_id}"
            procs = living([raylet, *raylet.children(recursive=True)])
        for proc in procs:
            try:
                proc.kill()
            except Exception:
                pass
        killed_at = time.time()
        deadline = killed_at + 10
        while living(procs) and time.time() < deadline:
            time.sleep(0.05)
        assert not living(procs), living(procs)
        if isinstance(node, WorkerNode):
            node.killed = True
        self.wait_nodes(lambda states: states.get(node_id) == "DEAD", timeout, f"{name} dead")
        return time.time() - killed_at

    def head_node(self) -> str:
        """The head's node id, as the GCS reports it."""
        result = self.get("/api/v0/nodes?limit=10000&detail=true")["data"]["result"]["result"]
        return next(n["node_id"] for n in result if n["is_head_node"] and n["state"] == "ALIVE")

    # ------------------------------------------------------------------ jobs
    def submit(self, args: list[str], working_dir: str | None, submission_id: str,
               extra: list[str] = ()) -> subprocess.CompletedProcess:
        """`ray job submit --no-wait` with the client environment; `extra`: more options
        (e.g. ["--entrypoint-num-cpus=1"]). Asserts it was accepted."""
        uploads = ["--working-dir", str(working_dir)] if working_dir is not None else []
        command = [str(BIN / "ray"), "job", "submit", "--address", self.url, "--submission-id", submission_id,
                   "--no-wait", *uploads, *extra, "--", *args]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def job(self, submission_id: str) -> dict:
        """The job's details from the Jobs REST API (status, driver_info, driver_exit_code, ...)."""
        return self.get(f"/api/jobs/{submission_id}")

    def wait_job(self, submission_id: str, timeout: float = 120) -> dict:
        """Poll until the job is SUCCEEDED, FAILED or STOPPED; its final details."""
        deadline = time.time() + timeout
        while True:
            job = self.job(submission_id)
            if job["status"] in JOB_DONE:
                return job
            assert time.time() < deadline, f"job {submission_id} still {job['status']}"
            time.sleep(0.5)

    def wait_job_running(self, submission_id: str, timeout: float = 60) -> dict:
        """Poll until the job has left PENDING (its entrypoint started, or it failed to)."""
        deadline = time.time() + timeout
        while True:
            job = self.job(submission_id)
            if job["status"] != "PENDING":
                return job
            assert time.time() < deadline, f"job {submission_id} still PENDING"
            time.sleep(0.3)

    def job_logs(self, submission_id: str) -> str:
        """The driver's output so far (the entrypoint's stdout and stderr, task output included)."""
        return self.get(f"/api/jobs/{submission_id}/logs").get("logs", "")

    def driver_pids(self, submission_id: str) -> list[int]:
        """The job's driver processes: the entrypoint (first) and its descendants.

        The job supervisor actor runs the entrypoint with `Popen(shell=True)` and an
        environment of its own: `RAY_JOB_CONFIG_JSON_ENV_VAR`, whose metadata names the
        submission id. Only the entrypoint and what it starts carry it (Ray workers are
        children of the raylets, not of the driver)."""
        import psutil

        found = {}
        for proc in head_processes(self.root, self.gcs_port):
            try:
                config = proc.environ().get("RAY_JOB_CONFIG_JSON_ENV_VAR")
                if config and json.loads(config).get("metadata", {}).get("job_submission_id") == submission_id:
                    found[proc.pid] = proc
            except (psutil.Error, ValueError):
                continue
        for proc in list(found.values()):
            try:
                for child in proc.children(recursive=True):
                    found[child.pid] = child
            except psutil.Error:
                pass
        parents = {}
        for proc in living(list(found.values())):
            try:
                parents[proc.pid] = proc.ppid()
            except psutil.Error:
                pass
        # The entrypoint (`/bin/sh -c <entrypoint>`) first: the one whose parent is not in the set.
        return sorted(parents, key=lambda pid: (parents[pid] in found, pid))

    def processes(self) -> list:
        """Every process of this cluster (all nodes, workers, drivers)."""
        return head_processes(self.root, self.gcs_port)


def _start_head(root: str, env: dict, extra: list[str], gcs: int) -> int:
    """`ray start --head` (no CPU, no GPU) in root/h with every port explicit. Returns the
    dashboard port; the dashboard comes up a little later (_wait_dashboard)."""
    dashboard, node_manager, object_manager, client, agent_http, agent_grpc, runtime_env, metrics = \
        [port for port in free_ports(9) if port != gcs][:8]
    command = [str(BIN / "ray"), "start", "--head", f"--port={gcs}", f"--temp-dir={root}/h",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=0", "--num-gpus=0",
               f"--object-store-memory={OBJECT_STORE_BYTES}",
               f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
               f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
               "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats", *extra]
    from ray._private.utils import get_ray_client_dependency_error

    if get_ray_client_dependency_error() is None:
        command.append(f"--ray-client-server-port={client}")
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    return dashboard


def _wait_dashboard(url: str, token: str):
    deadline = time.time() + 60
    while True:  # the dashboard (and its state API) come up a little after `ray start` returns
        try:
            if http(f"{url}/api/v0/nodes?limit=10", token=token)[0] == 200:
                break
        except OSError:
            pass
        assert time.time() < deadline, "the dashboard did not come up"
        time.sleep(0.3)


def _new_root() -> tuple[str, str, Path]:
    root = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Unix socket paths end up under it
    token = secrets.token_hex(32)
    token_file = Path(root, "auth_token")
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    return root, token, token_file


@contextmanager
def ray_cluster(worker_nodes: list[dict], env: dict | None = None, head_resources: dict | None = None,
                head_env: dict | None = FAST_NODE_DEATH):
    """A token-authenticated head (no CPU, no GPU, dashboard on 127.0.0.1) and one worker node
    per entry of worker_nodes ({"cpus": 1, "resources": {"name": 1.0}, "env": {...}}), all
    real `ray start` processes with explicit ports and their own temp dirs
    (/tmp/rcXXXX/h, /tmp/rcXXXX/w0, ...). `env` goes to every node's `ray start` (trial
    workers inherit it) and to the client env; `head_env` only to the head's (default: fast
    node-death detection). Yields a RayCluster; stops every process it started, by id."""
    root, token, token_file = _new_root()
    node_env = _base_env(token_file, env)
    gcs = free_ports(1)[0]  # known before the start: a head that fails half-way is stopped too
    try:
        extra = [f"--resources={json.dumps(head_resources)}"] if head_resources else []
        dashboard = _start_head(root, {**node_env, **(head_env or {})}, extra, gcs=gcs)
        cluster = RayCluster(root, token, token_file, _base_env(token_file, env), gcs, dashboard, node_env)
        # The workers start while the dashboard is still coming up (`ray start` needs the GCS only).
        cluster.add_nodes(worker_nodes, wait=False)
        _wait_dashboard(cluster.url, token)
        cluster.head_node_id = cluster.head_node()
        cluster.wait_nodes(lambda states: all(states.get(n.node_id) == "ALIVE" for n in cluster.nodes), 60,
                           "nodes alive")
        yield cluster
    finally:
        leftover = stop_head(root, gcs)  # every node: they all live under root
    assert not leftover, leftover  # reached only when the body itself passed


# ============================================================ autoscaling (fake nodes)
class AutoscalingHandle(RayCluster):
    """Handle yielded by `autoscaling_cluster`: as RayCluster (REST, jobs, client env, driver_pids),
    with worker nodes started and stopped by the autoscaler: `nodes` stays empty, node ids come
    from alive_node_ids(), and kill_node(node_id) kills one (a spot preemption; the autoscaler
    starts a replacement). add_node would add a node the autoscaler does not manage."""

    def wait_workers(self, count: int, timeout: float) -> float:
        """Poll until exactly `count` worker nodes are alive; the seconds it took."""
        return self.wait_nodes(lambda states: sum(s == "ALIVE" for n, s in states.items()
                                                  if n != self.head_node_id) == count,
                               timeout, f"{count} alive workers")


def fake_cluster_config(worker_types: dict, idle_timeout_minutes: float, gcs_address: str,
                        launch_multiple: bool = True) -> dict:
    """An autoscaler config for the fake multi-node provider, as ray.cluster_utils.AutoscalingCluster
    builds it (that class reads fake_multi_node/example.yaml, which the Ray wheel does not ship),
    with the provider pointed at our GCS (its default is <node ip>:6379, someone else's Ray)."""
    types = json.loads(json.dumps(worker_types))
    types["ray.head.default"] = {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "fake_multinode",
        "max_workers": sum(t.get("max_workers", 0) for t in worker_types.values()),
        # launch_multiple: start all the nodes of one launch request, not one per autoscaler update.
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address,
                     "launch_multiple": launch_multiple},
        "available_node_types": types, "head_node_type": "ray.head.default",
        "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_minutes, "docker": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


@contextmanager
def autoscaling_cluster(worker_types: dict, idle_timeout_minutes: float, env: dict | None = None,
                        head_env: dict | None = FAST_NODE_DEATH, update_interval_s: int = 1,
                        launch_multiple: bool = True):
    """A token-authenticated head (no CPU) whose autoscaler (fake multi-node provider) starts
    worker raylets on this machine for pending work and stops them after idle_timeout_minutes.
    `worker_types` follows cluster.yaml's available_node_types. Not
    ray.cluster_utils.AutoscalingCluster: its start() and shutdown() run `ray stop --force`.
    Yields an AutoscalingHandle; stops every process it started, by id."""
    root, token, token_file = _new_root()
    node_env = _base_env(token_file, env)
    # RAY_FAKE_CLUSTER: the fake provider refuses to run without it. The autoscaler (monitor.py,
    # started by the head) starts the fake nodes in its own process, with its environment.
    node_env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S=str(update_interval_s))
    gcs = free_ports(1)[0]  # the provider's config names it
    config_file = Path(root, "autoscaling.json")
    config_file.write_text(json.dumps(fake_cluster_config(worker_types, idle_timeout_minutes,
                                                          f"127.0.0.1:{gcs}", launch_multiple)))
    try:
        dashboard = _start_head(root, {**node_env, **(head_env or {})}, [f"--autoscaling-config={config_file}"],
                                gcs=gcs)
        cluster = AutoscalingHandle(root, token, token_file, _base_env(token_file, env), gcs, dashboard, node_env)
        _wait_dashboard(cluster.url, token)
        cluster.head_node_id = cluster.head_node()
        yield cluster
    finally:
        leftover = stop_head(root, gcs)  # the autoscaler's nodes too: they live in root/h
    assert not leftover, leftover


