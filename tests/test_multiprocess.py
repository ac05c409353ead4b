"""Two JAX processes on this machine form one job (issue 42): two fake CPU devices each, one
``(data 2, fsdp 2)`` mesh across both, CPU collectives through gloo, the real training loop
(`nested-jax train --processes 2`, `nested_jax.train.launch`).

* The job's losses and parameters equal one process's with the same four devices and mesh (each
  process reads only its half of every batch; the global batch is the one-process batch).
* Both processes SIGKILLed mid-run, then started again: the job resumes from the newest
  checkpoint the two wrote together, and ends with exactly the parameters of an uninterrupted job.
* A process that never comes, or one that dies mid-run, ends the other with an error within the
  job's timeout instead of leaving it waiting.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from train_helpers import write_corpus

from nested_jax.train import load_run
from nested_jax.train.launch import free_port, process_env

ENV = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
STEPS = 6


def _args(corpus, out, *extra):
    """``nested-jax train`` arguments: Titans with one layer (per-sample memory states, sharded
    with the batch) on a (data 2, fsdp 2) mesh, a batch of 4 (2 rows per process)."""
    sets = [
        "model='titans_tiny'",
        "model.n_layers=1",
        f"data.corpus={str(corpus)!r}",
        "data.seq_len=16",
        "data.batch_size=4",
        "data.val_fraction=0.3",
        "data.eval_batches=1",
        f"steps={STEPS}",
        "ckpt_every=2",
        "eval_every=0",
        "log_every=1",
        "plot=False",
        "mesh=(2, 2)",
        "optim.warmup_steps=0",
        *extra,
    ]
    argv = ["train", "--config", "shakespeare_transformer", "--out", str(out), "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    return argv


def _job(argv, timeout_s=20):
    """The two-process job through the CLI's launcher."""
    cmd = [sys.executable, "-m", "nested_jax", argv[0], "--processes", "2", "--devices", "2"]
    cmd += ["--dist-timeout", str(timeout_s), *argv[1:]]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _processes(argv, ids=(0, 1), timeout_s=20):
    """The job's processes started one by one (so that the test can kill them)."""
    port = free_port()
    cmd = [sys.executable, "-m", "nested_jax", *argv, "--set", "distributed=true"]
    return [
        subprocess.Popen(
            cmd,
            env=process_env(i, 2, port, 2, timeout_s, ENV),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in ids
    ]


def _losses(out):
    rec = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rec if "loss" in r], [r["step"] for r in rec if "loss" in r]


def _committed(out):
    ck = out / "checkpoints"
    return sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit()) if ck.exists() else []


def _finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (out or "")[-2000:] + err[-4000:]
    return err


@pytest.mark.timeout(400)
def test_two_processes_equal_one_and_resume_exactly_after_sigkill(tmp_path):
    corpus = write_corpus(tmp_path / "docs")
    one, job, killed = tmp_path / "one", tmp_path / "job", tmp_path / "killed"
    # the reference: one process holding the same four devices, the same mesh
    ref_env = dict(
        ENV, XLA_FLAGS=f"{ENV.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    )
    ref = subprocess.Popen(
        [sys.executable, "-m", "nested_jax", *_args(corpus, one)],
        env=ref_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the job to be killed: slowed down (step_sleep changes no value) so that the kill lands
    # between checkpoints, after at least one
    procs = _processes(_args(corpus, killed, "step_sleep=0.5"))
    deadline = time.time() + 200
    while time.time() < deadline and not any(s >= 2 for s in _committed(killed)):
        time.sleep(0.1)
        for p in procs:
            assert p.poll() is None, (
                f"a process ended before the kill: {p.communicate()[1][-3000:]}"
            )
    time.sleep(0.7)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        assert p.wait(timeout=60) == -signal.SIGKILL
    at_kill = _committed(killed)
    assert at_kill and max(at_kill) < STEPS
    err = _finish(ref)
    straight = _job(_args(corpus, job))
    err = _finish(straight)
    assert "2 processes x 2 CPU devices" in err
    assert "[process 1]" not in err or "Traceback" not in err
    resumed = _job(_args(corpus, killed))
    err = _finish(resumed)
    assert "resumed from" in err  # process 0 says so; process 1 only warns

    # the job's global batch is the one-process batch: the same losses, the same parameters
    l_one, _ = _losses(one)
    l_job, steps = _losses(job)
    assert steps == list(range(1, STEPS + 1))
    np.testing.assert_allclose(l_job, l_one, rtol=1e-5, atol=1e-6)
    _, p_one, s_one = load_run(one, load_data=False)
    _, p_job, s_job = load_run(job, load_data=False)
    _, p_killed, s_killed = load_run(killed, load_data=False)
    assert s_one == s_job == s_killed == STEPS
    for a, b, c in zip(*(jax.tree.leaves(t) for t in (p_one, p_job, p_killed)), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(c), np.asarray(b))  # resumed: exact
    l_killed, steps = _losses(killed)
    assert steps == list(range(1, STEPS + 1))  # none twice, none lost
    np.testing.assert_array_equal(l_killed, l_job)


@pytest.mark.timeout(300)
def test_a_missing_or_dying_process_fails_the_job_within_its_timeout(tmp_path):
    corpus = write_corpus(tmp_path / "docs")
    # process 1 never starts: process 0 gives up after the timeout, with a message (meanwhile,
    # on another port, the job whose process 1 dies mid-run)
    t_alone = time.time()
    (alone,) = _processes(_args(corpus, tmp_path / "alone"), ids=(0,), timeout_s=5)
    out = tmp_path / "dying"
    procs = _processes(_args(corpus, out, "step_sleep=0.5", "steps=200"), timeout_s=5)
    deadline = time.time() + 200
    while time.time() < deadline and not (
        (out / "metrics.jsonl").exists()
        and (out / "metrics.jsonl").read_text().count('"loss"') >= 2
    ):
        time.sleep(0.1)
        assert all(p.poll() is None for p in procs), "a process ended before the kill"
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    try:
        procs[0].wait(timeout=90)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("process 0 still waits 90 s after its peer died")
    assert procs[0].returncode != 0
    assert time.time() - t0 < 90
    _, err = alone.communicate(timeout=120)
    assert time.time() - t_alone < 120
    # JAX ends the process (SIGABRT) with its reason, after the line saying what it waited for
    assert alone.returncode != 0, err[-3000:]
    assert "joining a job of 2 processes as process 0" in err and "waiting up to 5 s" in err
    assert "DEADLINE_EXCEEDED" in err or "could not form the multi-process job" in err


def test_the_launcher_ends_a_job_when_one_process_fails(capsys):
    """`launch.wait_all`: the first failure's status, the others ended after the grace period."""
    from nested_jax.train import launch

    quick = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    t0 = time.time()
    assert launch.wait_all([stuck, quick], grace_s=1.0) == 3
    assert time.time() - t0 < 30 and stuck.poll() == -signal.SIGKILL
    err = capsys.readouterr().err
    assert "process 1 ended with status 3; the job fails" in err and "ending process 0" in err
    ok = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    assert launch.wait_all(ok, grace_s=1.0) == 0
    with pytest.raises(ValueError, match="--processes must be an integer >= 2"):
        launch.launch_local(["train"], processes=1)
