"""`lazyadam.torch.LazyAdam` under `DistributedDataParallel`: two processes over gloo on loopback.

Each replica trains on half of every global batch (tests/ddp_worker.py); DDP averages the sparse
embedding gradients and the dense ones. The replicas must end bitwise identical (the same averaged
gradients, the same kernels), and equal, to float32 noise, to one process trained on the whole
batches. The one process trains first, so that the replicas find their kernels compiled (a
replica compiling while the other waits in an all-reduce could outlast the process group's
timeout on a busy machine). The workers are bounded: the process group times out, and the test
kills them after `DEADLINE` seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="lazyadam.torch needs torch")
import ddp_worker  # noqa: E402  (after the skip: it imports torch)

pytestmark = pytest.mark.slow

WORLD = 2
DEADLINE = 180.0


def run_replicas(tmp_path: Path) -> list[dict[str, torch.Tensor]]:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                       os.environ.get("PYTHONPATH")]))}
    worker = Path(ddp_worker.__file__)
    logs = [open(tmp_path / f"rank{rank}.log", "w") for rank in range(WORLD)]
    procs = [subprocess.Popen([sys.executable, str(worker), str(rank), str(WORLD),
                               str(tmp_path / "rendezvous"), str(tmp_path)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
             for rank, log in enumerate(logs)]
    deadline = time.monotonic() + DEADLINE
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, (
            f"replica {rank} " + ("was stopped after the deadline" if proc.returncode < 0 else
                                  f"exited with {proc.returncode}")
            + "; the logs:\n" + "\n".join((tmp_path / f"rank{r}.log").read_text()
                                           for r in range(WORLD)))
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


def test_replicas_stay_identical_and_match_one_process(tmp_path):
    initial = ddp_worker.build().state_dict()
    single = ddp_worker.build()
    ddp_worker.train(single, ddp_worker.optimizer(single))  # first: it fills the kernel cache
    replicas = run_replicas(tmp_path)
    for name, expected in single.state_dict().items():
        first, second = (replica[name] for replica in replicas)
        assert torch.equal(first, second), f"{name}: the replicas differ"
        assert not torch.equal(first, initial[name]), f"{name} was not trained"
        np.testing.assert_allclose(first.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
