"""A DDP run whose worker dies ends in one line naming the rank, within a bounded time; nothing is left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from lightning.pytorch.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from conftest import ROOT
from mlplab.faults import lost_workers

DDP = ["debug=fast", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=100",
       "data.batch_size=8", "model.hidden_dims=[8]", "scheduler=none", "callbacks.early_stopping=null"]


def test_a_killed_ddp_worker_ends_the_run_with_its_rank(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    env = os.environ | {"DATA_DIR": str(data_dir), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    main = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *DDP, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "last.ckpt").is_file() and main.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        [worker] = map(int, Path(f"/proc/{main.pid}/task/{main.pid}/children").read_text().split())
        os.kill(worker, signal.SIGKILL)  # as the kernel's OOM killer would
        output = main.communicate(timeout=60)[0]  # bounded: gloo reports the lost peer at once
    finally:
        main.kill()
    assert main.returncode == 1
    [line] = [line for line in output.splitlines() if "error:" in line]
    assert f"error: distributed training lost a worker: rank 1 (PID {worker}) ended by signal 9; rank 0 stopped at epoch" in line
    assert f"{run_dir}/checkpoints/last.ckpt keeps the end of epoch" in line
    assert "Traceback" not in output


def test_the_launchers_record_of_worker_processes_is_still_there():
    """mlplab.faults.worker_processes reads Lightning's private ``procs``: this fails loudly if Lightning renames it."""
    launcher = _SubprocessScriptLauncher(LightningEnvironment(), num_processes=2, num_nodes=1)
    assert launcher.procs == []


def test_a_worker_still_dying_when_the_error_arrives_is_named():
    """A SIGKILLed peer's sockets close before the kernel reaps it, so rank 0 can hear of it first (a CI flake)."""
    dying = subprocess.Popen(["sh", "-c", "sleep 0.3; kill -9 $$"])
    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=SimpleNamespace(procs=[dying])), node_rank=0,
                              num_devices=2, global_rank=0, current_epoch=3, global_step=40, checkpoint_callbacks=[])
    error = lost_workers(trainer, RuntimeError("[gloo] Connection closed by peer"))
    assert f"lost a worker: rank 1 (PID {dying.pid}) ended by signal 9; rank 0 stopped at epoch 3, step 40" in str(error)
