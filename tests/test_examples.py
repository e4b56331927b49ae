"""The distributed-training examples run in a short form: with two processes (torch DDP, gloo) and
two devices (JAX sharding on two host devices), the loss falls and every replica holds identical
weights; each example checks both itself and says so in its exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_torch_ddp_on_two_processes_trains_and_keeps_replicas_identical() -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        str(EXAMPLES / "train_torch_ddp.py"),
    ]
    result = subprocess.run([*command, "--steps", "12"], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replicas identical: True" in result.stdout and "(fell: True)" in result.stdout


def test_jax_sharded_on_two_devices_trains_and_keeps_replicas_identical() -> None:
    environment = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    command = [sys.executable, str(EXAMPLES / "train_jax_sharded.py"), "--steps", "12"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 devices; replicas identical: True" in result.stdout
