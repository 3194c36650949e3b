"""Shared test setup: one torch thread per process; an embedded local Ray for Ray tests."""
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray workers import test helpers (factories, wrapper trainables) by module name.
_TESTS = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_TESTS, os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def local_ray():
    """A fresh embedded Ray for this module: ``address="local"`` never joins another
    Ray running on the machine, and shutdown stops only what this process started."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data directory holding MNIST-1D (built offline), for a module's runs."""
    from aalr_ray.data import load_dataset

    directory = tmp_path_factory.mktemp("data")
    load_dataset("mnist1d", data_dir=directory)
    return str(directory)


# The modules that take minutes (Ray drivers started, interrupted and resumed), longest first,
# as measured by `--durations`. `make test` runs `--dist loadscope --no-loadscope-reorder`, so
# xdist hands modules to its workers in collection order: these start at once and the many
# quick modules fill the gaps. (xdist's default order, most tests first, started them last, and
# one worker ran the chain of fault tests alone for minutes while the others idled.)
LONGEST_MODULES = ("test_multinode.py", "test_jobs.py", "test_trainable.py", "test_faults.py", "test_cluster.py",
                   "test_distributed.py", "test_scheduler.py", "test_equivalence.py", "test_full_disk.py",
                   "test_runner.py", "test_search.py", "test_monitoring.py", "test_bench_gpu.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a module kept
