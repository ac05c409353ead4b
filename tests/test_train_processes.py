"""Training across processes: SIGKILL mid-run and resume; 8 fake CPU devices == 1 device."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
from train_helpers import write_corpus

from nested_jax.train import load_run

ENV = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")


def _train_cmd(corpus, out, *extra):
    sets = [
        f"data.corpus={corpus}",
        "data.seq_len=32",
        "data.batch_size=4",
        "data.val_fraction=0.3",
        "steps=30",
        "ckpt_every=5",
        "eval_every=0",
        "log_every=1",
        "plot=False",
        *extra,
    ]
    cmd = [sys.executable, "-m", "nested_jax", "train", "--config", "shakespeare_transformer"]
    for s in sets:
        cmd += ["--set", s]
    return cmd + ["--out", str(out), "--no-progress"]


def _committed_steps(out):
    ck = out / "checkpoints"
    return sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit()) if ck.exists() else []


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    corpus = write_corpus(tmp_path / "docs")
    killed = tmp_path / "killed"
    # step_sleep only slows the run so that the kill lands mid-way; it changes no value
    proc = subprocess.Popen(
        _train_cmd(corpus, killed, "step_sleep=0.2"),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not any(s >= 10 for s in _committed_steps(killed)):
        time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    steps_at_kill = _committed_steps(killed)
    assert steps_at_kill and max(steps_at_kill) < 30  # killed mid-run
    r = subprocess.run(_train_cmd(corpus, killed), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    straight = tmp_path / "straight"
    r = subprocess.run(_train_cmd(corpus, straight), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    _, a, sa = load_run(killed, load_data=False)
    _, b, sb = load_run(straight, load_data=False)
    assert sa == sb == 30
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    records = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 31))  # none twice


def test_sigterm_saves_the_current_step_and_resumes(tmp_path):
    """SIGTERM (a scheduler or an ending session) stops the run like Ctrl-C: a checkpoint at the
    step it was stopped at, not only the last periodic one; running again resumes from it."""
    corpus = write_corpus(tmp_path / "docs")
    out = tmp_path / "termed"
    proc = subprocess.Popen(
        _train_cmd(corpus, out, "step_sleep=0.2", "ckpt_every=100"),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (
        metrics.exists() and metrics.read_text().count('"loss"') >= 3  # 3 steps logged
    ):
        time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "interrupted at step" in err
    steps = _committed_steps(out)
    assert len(steps) == 1 and 3 <= steps[0] < 30  # saved where it stopped (ckpt_every is 100)
    r = subprocess.run(_train_cmd(corpus, out), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr and 30 in _committed_steps(out)


SHARDED = textwrap.dedent(
    """
    import json, sys, jax, numpy as np
    from nested_jax.train import Run, get_train_config
    corpus, out = sys.argv[1], sys.argv[2]
    res = {"devices": jax.device_count()}
    models = {"tiny": [], "hope_tiny": [
        "model.first_order=True", "model.titans.eta_max=0.02", "model.n_layers=1"]}
    for model, extra in models.items():
        losses = {}
        for mesh in ((1, 1), (4, 2)):
            cfg = get_train_config("shakespeare_transformer", [
                f"model={model!r}", f"data.corpus={corpus!r}", "data.seq_len=16",
                "data.batch_size=8", "steps=3", f"mesh={mesh}", "optim.warmup_steps=0", *extra])
            run = Run(cfg, f"{out}/{model}-{mesh[0]}x{mesh[1]}")
            state, it, ls = run.init_state(), run.data_iterator(), []
            for _ in range(3):
                state, m = run.step(state, run.batch(next(it)))
                ls.append(float(m["loss"]))
            losses[str(mesh)] = ls
            if mesh == (4, 2):  # the per-sample fast states follow the batch over all 8 devices
                m = run.model
                toks = run.batch(next(it))
                f = jax.jit(lambda p, t: m.apply(p, t, m.init_state(p, t.shape[0]))[1])
                fast = [l for l in jax.tree.leaves(f(state.params, toks)) if 8 in l.shape[:2]]
                res[f"{model}-fast-leaves"] = len(fast)
                res[f"{model}-fast-split-8"] = sum(
                    int(np.prod(l.sharding.shard_shape(l.shape))) * 8 == l.size for l in fast)
            specs = {str(l.sharding.spec) for l in jax.tree.leaves(state.params)}
            res[f"{model}-{mesh}-param-specs"] = sorted(specs)
            res[f"{model}-{mesh}-devices"] = len(jax.tree.leaves(state.params)[0].sharding.device_set)
        res[model] = losses
    try:
        Run(get_train_config("shakespeare_transformer", [f"data.corpus={corpus!r}",
            "data.batch_size=6", "mesh=(4, 2)"]), f"{out}/bad")
    except Exception as e:
        res["bad_batch"] = str(e)
    print("RESULT" + json.dumps(res))
    """
)


def test_eight_devices_match_one_device(tmp_path):
    """Transformer++ and Hope (the quickstart's first-order Hope, one layer: the second-order one
    and more layers compile slower and run the same sharding code) on a (data 4, fsdp 2) mesh vs
    one device; the batch, and with it every per-sample state, split over all 8 devices."""
    corpus = write_corpus(tmp_path / "docs")
    env = dict(
        ENV, XLA_FLAGS=f"{ENV.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    )
    r = subprocess.run(
        [sys.executable, "-c", SHARDED, str(corpus), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.split("RESULT", 1)[1])
    assert res["devices"] == 8
    for model in ("tiny", "hope_tiny"):
        one, eight = res[model]["(1, 1)"], res[model]["(4, 2)"]
        assert len(one) == 3 and all(np.isfinite(one)) and one[2] < one[0]
        np.testing.assert_allclose(eight, one, atol=1e-5, rtol=0)
        assert res[f"{model}-(4, 2)-devices"] == 8 and res[f"{model}-(1, 1)-devices"] == 1
        assert any("fsdp" in s for s in res[f"{model}-(4, 2)-param-specs"])
    # no per-sample state is replicated: each device holds its own row's (Hope: its memories'
    # and CMS levels' states; the Transformer++ has none)
    assert res["hope_tiny-fast-leaves"] > 0
    assert res["hope_tiny-fast-split-8"] == res["hope_tiny-fast-leaves"]
    assert "batch_size=6 must be a multiple" in res["bad_batch"]
