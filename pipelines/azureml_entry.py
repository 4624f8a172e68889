"""Entry script of the Azure ML parallel step (copied into the component's code folder at publish time).

Azure ML's parallel run calls :func:`init` once per process and :func:`run` once per mini-batch; a
mini-batch is one task file written by ``fleetscore score-step plan``, i.e. one shard of devices. Each
shard runs ``fleetscore score-step shard TASK`` in the image, in its own process, so a crash in one shard
is that shard's failure only (Azure ML retries it; ``score-step finalize`` decides whether the run fails).
This file imports nothing from fleetscore: it must run with the interpreter Azure ML's driver uses.
"""

from __future__ import annotations

import argparse
import subprocess

_args: list[str] = []


def init() -> None:
    """Read the step's arguments (``--storage-url URL``) once per process."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage-url", default=None)
    known, _ = parser.parse_known_args()
    _args.clear()
    if known.storage_url:
        _args.extend(["--storage-url", known.storage_url])


def run(mini_batch: list[str]) -> list[str]:
    """Score each task file of the mini-batch; returns one summary line per shard (appended to results)."""
    lines = []
    for task in mini_batch:
        done = subprocess.run(["fleetscore", *_args, "score-step", "shard", str(task)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            message = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise RuntimeError(f"{task}: {message}")
        lines.append(done.stdout.strip())
    return lines
