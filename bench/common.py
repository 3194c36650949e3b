"""Shared by the benchmark scripts: machine description and result fragments."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    import ray
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} cores ({cpu}), {gpu}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, Ray {ray.__version__}")


def write_fragment(name: str, title: str, command: str, body: str) -> Path:
    """Write ``results/<name>.md``: one BENCHMARKS.md section with its command and machine."""
    RESULTS.mkdir(exist_ok=True)
    text = (f"## {title}\n\n"
            f"Command: `{command}`  \n"
            f"Machine: {machine()}  \n"
            f"Date: {datetime.date.today().isoformat()}\n\n{body.rstrip()}\n")
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    return path
