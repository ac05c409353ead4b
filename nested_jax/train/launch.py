"""A multi-process job on one machine: the multi-host path, tried without a cluster.

``nested-jax train --processes N ...`` (or `launch_local`) starts ``N`` copies of the same
``nested-jax`` command, each a JAX process of its own with ``--devices`` fake CPU devices, joined
through a coordinator on a free local port (`nested_jax.train.sharding.initialize_distributed`
reads the environment set here). The mesh spans every process's devices, each process reads its
own share of every batch, checkpoints are written by all of them together; process 0 logs, the
others only warn (their lines start with ``[process i]``).

If a process fails, the job fails: the others stop by themselves once the coordinator misses its
heartbeats for ``timeout_s`` seconds (or once their own collective fails), and whatever is still
running a grace period later is ended here. The exit status is the first failed process's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from nested_jax.train.sharding import ENV_PROCESS_ID, ENV_PROCESSES, ENV_TIMEOUT

__all__ = ["free_port", "launch_local", "process_env", "wait_all"]


def free_port() -> int:
    """A TCP port that nothing on this machine listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(
    process_id: int, processes: int, port: int, devices: int, timeout_s: int, base=None
) -> dict:
    """The environment of process ``process_id`` of a local job (CPU, ``devices`` fake devices)."""
    env = dict(os.environ if base is None else base)
    flags = env.get("XLA_FLAGS", "").split()
    flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    env.update(
        {
            "XLA_FLAGS": " ".join(flags),
            "JAX_PLATFORMS": "cpu",
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            ENV_PROCESSES: str(processes),
            ENV_PROCESS_ID: str(process_id),
            ENV_TIMEOUT: str(timeout_s),
        }
    )
    return env


def _check(processes: int, devices: int, timeout_s: int) -> None:
    for name, value, low in (("processes", processes, 2), ("devices", devices, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"--{name} must be an integer >= {low}, got {value!r}.")
    if not isinstance(timeout_s, int) or timeout_s < 1:
        raise ValueError(f"the timeout must be a positive number of seconds, got {timeout_s!r}.")


def launch_local(
    argv: Sequence[str],
    processes: int = 2,
    devices: int = 2,
    timeout_s: int = 30,
    *,
    grace_s: float | None = None,
    env=None,
) -> int:
    """Run ``python -m nested_jax <argv> --set distributed=true`` as ``processes`` processes of
    one job on this machine and wait for them: 0 if every one succeeded, else the first failed
    one's exit status (a process killed by a signal: ``128 + signal``). ``grace_s`` (default
    ``2 * timeout_s + 10``): how long the others may take to stop after one fails."""
    _check(processes, devices, timeout_s)
    grace_s = 2 * timeout_s + 10 if grace_s is None else grace_s
    port = free_port()
    cmd = [sys.executable, "-m", "nested_jax", *argv, "--set", "distributed=true"]
    procs = [
        subprocess.Popen(cmd, env=process_env(i, processes, port, devices, timeout_s, env))
        for i in range(processes)
    ]
    print(
        f"nested-jax: {processes} processes x {devices} CPU devices, coordinator "
        f"localhost:{port} (pids {' '.join(str(p.pid) for p in procs)})",
        file=sys.stderr,
        flush=True,
    )
    try:
        return wait_all(procs, grace_s)
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached every process: let them save
        for p in procs:
            try:
                p.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                p.kill()
        return 130


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def wait_all(procs: list, grace_s: float) -> int:
    """Wait for every process of a job: 0 if all succeeded, else the first failure's status
    (``128 + signal`` for a signal), the others killed once ``grace_s`` has passed after it."""
    failed = None  # (index, status)
    deadline = None
    while True:
        codes = [p.poll() for p in procs]
        if failed is None:
            for i, c in enumerate(codes):
                if c not in (None, 0):
                    failed = (i, _status(c))
                    deadline = time.monotonic() + grace_s
                    how = f"signal {-c}" if c < 0 else f"status {c}"
                    print(
                        f"nested-jax: process {i} ended with {how}; the job fails (the other "
                        f"processes stop within {grace_s:g} s)",
                        file=sys.stderr,
                        flush=True,
                    )
                    break
        if all(c is not None for c in codes):
            return 0 if failed is None else failed[1]
        if deadline is not None and time.monotonic() > deadline:
            for i, p in enumerate(procs):
                if p.poll() is None:
                    print(f"nested-jax: ending process {i}", file=sys.stderr, flush=True)
                    p.send_signal(signal.SIGKILL)
            for p in procs:
                p.wait()
            return failed[1]
        time.sleep(0.05)
