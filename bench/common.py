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


def write_section(name: str) -> Path:
    """Put ``results/<name>.md`` into BENCHMARKS.md in place: replace the section with its
    title, or append it. For a script run on its own; ``run_all.py`` reassembles the whole file."""
    fragment = (RESULTS / f"{name}.md").read_text().rstrip() + "\n"
    title = fragment.splitlines()[0]
    path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if title + "\n" in lines:
        start = lines.index(title + "\n")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        text = "".join(lines[:start]) + fragment + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    else:
        text = text.rstrip() + "\n\n" + fragment
    text = "\n".join(f"{line.rstrip('.')}, {name}." if line.startswith("Contents: ") and name not in line
                     else line for line in text.split("\n"))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
