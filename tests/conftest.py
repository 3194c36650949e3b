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
