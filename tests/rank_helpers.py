"""Start the ranks of a CPU process group directly, as `torchrun --standalone` would.

torchrun's launcher is one more interpreter importing torch and an elastic agent that watches
the ranks: about four seconds of a core per launch on a 2-core machine. The ranks need only the
environment it sets, so the tests that are about the ranks' behaviour (not about torchrun) start
them here; `test_mmfuse_train_runs_unchanged_under_torchrun` keeps the real launcher.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(argv: list[str], procs: int, logs: Path, timeout: float = 300) -> tuple[int, str]:
    """Run `python argv...` as ranks 0..procs-1 of one group; `(exit code, stderr)`: 0 and ""
    when every rank succeeded, else a failed rank's code and the end of each failed rank's
    stderr. As torchrun does, a rank that fails stops the others (they would wait in
    their next collective until gloo's 30-minute timeout)."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.update(MASTER_PORT=str(free_port()), WORLD_SIZE=str(procs), LOCAL_WORLD_SIZE=str(procs))
    ranks = []
    for rank in range(procs):
        err = (logs / f"stderr-{rank}.txt").open("w")
        ranks.append(
            subprocess.Popen(
                [sys.executable, *argv],
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        )
        err.close()
    deadline = time.monotonic() + timeout
    failed: list[int] = []
    try:
        while not failed and any(p.poll() is None for p in ranks):
            failed = [i for i, p in enumerate(ranks) if p.returncode not in (None, 0)]
            if time.monotonic() > deadline:
                failed = [i for i, p in enumerate(ranks) if p.returncode is None]
                break
            time.sleep(0.05)
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
            p.wait()
    failed = failed or [i for i, p in enumerate(ranks) if p.returncode != 0]
    # Every failed rank's tail: the one that failed first may not be the one polled first.
    errors = [f"rank {i}: {(logs / f'stderr-{i}.txt').read_text()[-1500:]}" for i in failed]
    return (ranks[failed[0]].returncode if failed else 0), "\n".join(errors)
