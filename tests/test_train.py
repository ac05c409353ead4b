"""Training: configs, steps, the loop, checkpoints, NaN policy, CLI (issue 5)."""

import json
import logging
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_helpers import tiny_config, write_corpus

from nested_jax import cli
from nested_jax.models import LanguageModel, get_config
from nested_jax.train import (
    CheckpointMismatchError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    Run,
    evaluate,
    generate,
    get_train_config,
    load_run,
    read_metrics,
    train,
)
from nested_jax.train.config import OPTIMIZERS, OptimConfig, TrainConfig
from nested_jax.train.optimizers import make_optimizer, make_schedule
from nested_jax.train.step import init_train_state, train_step


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs")


def params_of(out_dir):
    _, state, step = load_run(out_dir, load_data=False)
    return step, jax.device_get(state)


def assert_same_tree(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------------------- configs
def test_overrides_parse_and_round_trip():
    cfg = get_train_config(
        "quickstart",
        ["steps=7", "data.seq_len=64", "optim.lr=1e-3", "model.cms.periods=(16, 32)", "plot=False"],
    )
    assert cfg.steps == 7 and cfg.data.seq_len == 64 and cfg.optim.lr == 1e-3 and not cfg.plot
    assert dict(cfg.model_overrides)["cms.periods"] == (16, 32)
    assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    # booleans as a shell user types them, or as Python literals
    for text, want in (("true", True), ("False", False), ("TRUE", True), ("True", True)):
        assert get_train_config("quickstart", [f"plot={text}"]).plot is want


@pytest.mark.parametrize(
    "override, match",
    [
        ("steps=0", "steps must be >= 1"),
        ("steps=2.5", "steps must be an integer"),
        ("data.seq_len=4096", "exceeds the model's max_len"),
        ("optim.name=lion", "optim.name must be one of"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("data.tokenizer=words", "data.tokenizer"),
        ("model.cms.periods=(3, 8)", "multiple of the smallest"),
        ("model.colour=1", "unknown model config field 'colour'"),
        ("model.cms.colour=1", "unknown field 'cms.colour'"),
        ("model.cms_periods=(8, 16)", "'cms_periods' is now 'cms.periods'"),
        ("banana=1", "unknown config key 'banana'"),
        ("steps", "not of the form key=value"),
        ("mesh=(0, 0)", "mesh"),
        ("nan_policy=ignore", "nan_policy"),
        ("distributed=yes", "distributed must be True or False"),
    ],
)
def test_bad_configs_are_rejected_before_anything_runs(override, match):
    with pytest.raises(ConfigError, match=match):
        get_train_config("quickstart", [override])


def test_unknown_key_lists_only_keys_that_can_be_set():
    with pytest.raises(ConfigError, match="unknown config key 'model_overrides'") as e:
        get_train_config("quickstart", ["model_overrides=()"])
    assert "'steps'" in str(e.value) and str(e.value).count("'model_overrides'") == 1


def test_unknown_config_name():
    with pytest.raises(ConfigError, match="unknown training config"):
        get_train_config("gpt5")


def test_schedule_warms_up_and_decays():
    o = OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", final_lr_fraction=0.1)
    s = make_schedule(o, 110)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0) and float(s(110)) == pytest.approx(0.1)
    lin = make_schedule(OptimConfig(lr=1.0, warmup_steps=0, schedule="linear"), 100)
    assert float(lin(50)) == pytest.approx(0.55)


# --------------------------------------------------------------------------------------- steps
@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n not in ("adam", "sgd")])
def test_every_optimizer_trains_a_step(name):
    """(optax's own adam and sgd are exercised by the loop tests: adamw, sgd.)"""
    model = LanguageModel(get_config("tiny"))
    opt = make_optimizer(OptimConfig(name=name, lr=1e-2, warmup_steps=0), 10)
    state = init_train_state(model, opt, jax.random.key(0))
    batch = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
    new, m = jax.jit(lambda s, b: train_step(model, opt, s, b))(state, batch)
    assert bool(m["finite"]) and int(new.step) == 1 and int(new.skipped) == 0
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params), strict=True)
    ]
    assert any(moved)


def test_nonfinite_step_is_not_applied():
    model = LanguageModel(get_config("tiny"))
    opt = optax.adam(1e-2)
    state = init_train_state(model, opt, jax.random.key(0))
    params = dict(state.params, final_norm=state.params["final_norm"].at[0].set(jnp.nan))
    state = state._replace(params=params)
    batch = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
    new, m = jax.jit(lambda s, b: train_step(model, opt, s, b))(state, batch)
    assert not bool(m["finite"]) and int(new.skipped) == 1 and int(new.step) == 1
    assert_same_tree(new.params, state.params)
    assert_same_tree(new.opt_state, state.opt_state)


# ---------------------------------------------------------------------------------------- loop
@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    """12 uninterrupted steps: the reference every cut-and-resumed run must equal exactly."""
    out = tmp_path_factory.mktemp("full") / "run"
    res = train(tiny_config(corpus, "plot=True", "tensorboard=True"), out, progress=False)
    return out, res


@pytest.fixture(scope="module")
def cut_run(corpus, tmp_path_factory):
    """The same run stopped after 8 steps (checkpoints at 4 and 8)."""
    out = tmp_path_factory.mktemp("cut") / "run"
    train(tiny_config(corpus, "steps=8"), out, progress=False)
    return out


def test_train_writes_metrics_checkpoints_plot_and_resumes_exactly(
    corpus, full_run, cut_run, tmp_path, caplog
):
    full, res = full_run
    assert (
        res.step == 12
        and np.isfinite(res.val_loss)
        and res.val_bpb == pytest.approx(res.val_loss / np.log(2))
    )
    rec = read_metrics(full)
    losses = [r["loss"] for r in rec if "loss" in r]
    assert [r["step"] for r in rec if "loss" in r] == [2, 4, 6, 8, 10, 12]
    assert losses[-1] < losses[0]  # it learns
    assert [r["step"] for r in rec if "val_loss" in r] == [6, 12]
    assert sorted(int(p.name) for p in (full / "checkpoints").iterdir()) == [4, 8, 12]
    assert (full / "loss.png").stat().st_size > 1000
    assert list((full / "tb").glob("events.out.tfevents*"))
    # stopped after 8 steps, then resumed to 12: identical final state and iterator position
    part = tmp_path / "part"
    shutil.copytree(cut_run, part)
    with caplog.at_level(logging.WARNING, logger="nested_jax.train"):
        train(tiny_config(corpus), part, progress=False)
    assert "differs" not in caplog.text  # more steps is not a changed config
    sa, a = params_of(full)
    sb, b = params_of(part)
    assert sa == sb == 12
    assert_same_tree(a, b)
    rec_b = read_metrics(part)
    assert [r["step"] for r in rec_b if "loss" in r] == [2, 4, 6, 8, 10, 12]
    ev = evaluate(full)
    assert ev["step"] == 12 and ev["val_loss"] == pytest.approx(res.val_loss, rel=1e-6)
    text = generate(full, "the ", length=20, temperature=0.0)
    assert isinstance(text, str) and len(text.encode("utf-8", "replace")) >= 10


def test_a_finished_run_is_left_alone(corpus, full_run, tmp_path, caplog):
    """Running a finished run again trains nothing, reports its last losses (not NaN) and leaves
    its config.json as it was, even when the command changed a setting."""
    full, res = full_run
    done = tmp_path / "done"
    shutil.copytree(full, done)
    before = (done / "config.json").read_text()
    with caplog.at_level(logging.INFO, logger="nested_jax.train"):
        again = train(tiny_config(corpus, "optim.lr=0.5"), done, progress=False)
    assert again.step == 12 and again.train_loss == pytest.approx(res.train_loss)
    assert again.val_loss == pytest.approx(res.val_loss)
    assert (done / "config.json").read_text() == before
    assert "is finished" in caplog.text and "not used" in caplog.text
    assert "validation tokens" in caplog.text  # the corpus and its split are reported
    assert sorted(int(p.name) for p in (done / "checkpoints").iterdir()) == [4, 8, 12]


def test_a_time_budget_stops_checkpoints_and_evaluates_then_resumes(corpus, tmp_path, caplog):
    """``max_minutes``: the run stops once its steps (not the first, which compiles) have taken
    the budget, checkpoints and evaluates; run again it is finished; with a larger budget it goes
    on to ``steps``, the training time counted across the two processes' steps."""
    out = tmp_path / "budget"
    caplog.set_level(logging.INFO, logger="nested_jax.train")
    res = train(tiny_config(corpus, "max_minutes=1e-6"), out, progress=False)
    assert res.budget_spent and 2 <= res.step < 12 and np.isfinite(res.val_loss)
    assert res.train_s >= 60e-6 and "time budget of 1e-06 minutes reached" in caplog.text
    assert res.checkpoint.name == str(res.step)
    again = train(tiny_config(corpus, "max_minutes=1e-6"), out, progress=False)
    assert again.step == res.step and again.budget_spent and "budget spent" in caplog.text
    more = train(tiny_config(corpus), out, progress=False)  # no budget: to the end
    assert more.step == 12 and not more.budget_spent and more.train_s > res.train_s
    with pytest.raises(ConfigError, match="max_minutes must be >= 0"):
        train(tiny_config(corpus, "max_minutes=-1"), tmp_path / "bad", progress=False)


@pytest.mark.parametrize("signals", [1, 2])
def test_a_signal_inside_a_step_waits_for_it_and_a_second_stops_at_once(
    corpus, full_run, tmp_path, monkeypatch, caplog, signals
):
    """SIGTERM sent while step 6 runs: the step finishes (logged, evaluated) and is saved, and
    the run stops. Sent twice, the run stops inside the step and saves nothing (its input state
    was donated to it), so the checkpoint at step 4 stays the resume point. Either way, running
    again ends where the uninterrupted run ends, and the previous handler is back."""
    from nested_jax.train import loop

    real = loop.Run.step

    def step(self, state, batch):
        out = real(self, state, batch)
        if int(out[0].step) == 6:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(loop.Run, "step", step)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="nested_jax.train"):
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(corpus), out, progress=False)
    assert signal.getsignal(signal.SIGTERM) is before
    saved = sorted(int(p.name) for p in (out / "checkpoints").iterdir())
    rec = read_metrics(out)
    if signals == 1:
        assert saved == [4, 6] and "stopping after this step" in caplog.text
        assert [r["step"] for r in rec if "val_loss" in r] == [6]  # step 6 ran to its end
    else:
        assert saved == [4] and "stopped inside a step, so nothing is saved" in caplog.text
        assert all(r["step"] <= 5 for r in rec if "loss" in r)
    monkeypatch.undo()
    res = train(tiny_config(corpus), out, progress=False)
    assert res.step == 12
    assert_same_tree(params_of(out)[1], params_of(full_run[0])[1])


@pytest.mark.parametrize("damage", ["truncate", "scramble", "metadata"])
def test_corrupt_latest_checkpoint_falls_back_to_previous(
    corpus, full_run, cut_run, tmp_path, caplog, damage
):
    run = tmp_path / "run"
    shutil.copytree(cut_run, run)
    latest = run / "checkpoints/8"
    if damage == "metadata":
        target = latest / "_CHECKPOINT_METADATA"
    else:
        target = max(
            (p for p in (latest / "state").rglob("*") if p.is_file()),
            key=lambda p: p.stat().st_size,
        )
    raw = target.read_bytes()
    if damage == "scramble":
        target.write_bytes(raw[:20] + bytes(255 - b for b in raw[20:]))
    else:
        target.write_bytes(raw[: len(raw) // 2])
    if damage == "truncate":  # reading a run (eval) skips the bad step but leaves it in place
        assert evaluate(run)["step"] == 4
        assert latest.is_dir() and not (run / "checkpoints/corrupt-8").exists()
    with caplog.at_level(logging.ERROR, logger="nested_jax.train"):
        res = train(tiny_config(corpus), run, progress=False)
    assert any(
        "checkpoints/8" in r.getMessage() and "cannot be restored" in r.getMessage()
        for r in caplog.records
    )
    assert (run / "checkpoints/corrupt-8").is_dir()  # kept aside, not deleted
    assert res.step == 12  # resumed from step 4, and nothing else was lost:
    assert_same_tree(params_of(run)[1], params_of(full_run[0])[1])


def test_unreadable_or_missing_checkpoints_are_one_clear_error(cut_run, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(cut_run, run)
    for f in (run / "checkpoints").rglob("*"):
        if f.is_file() and "state" in f.parts and "metadata" not in f.name.lower():
            f.write_bytes(b"garbage")
    capfd.readouterr()
    with pytest.raises(FileNotFoundError, match=r"can be restored \(steps \[4, 8\].*intact copy"):
        evaluate(run)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "DATA_LOSS" not in err  # orbax's internals stay out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["4", "8"]  # read-only
    for step in (run / "checkpoints").iterdir():
        shutil.rmtree(step)
    with pytest.raises(FileNotFoundError, match="saved none .* Resume it"):
        evaluate(run)


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    from nested_jax.train import checkpoint as ckpt_lib
    from nested_jax.train import loop

    closed = []  # an error exit still closes the checkpoint manager and the metrics file
    for cls, name in ((ckpt_lib.Checkpoints, "ckpt"), (loop._Metrics, "metrics")):
        real = cls.close
        monkeypatch.setattr(
            cls, "close", lambda self, real=real, n=name: (closed.append(n), real(self))
        )
    cfg = tiny_config(
        corpus, "optim.name='sgd'", "optim.lr=1e12", "optim.clip_norm=0.0", "ckpt_every=1"
    )
    with pytest.raises(
        NonFiniteLossError, match=r"at step \d+ .*last good checkpoint is .*checkpoints/\d+"
    ):
        train(cfg, tmp_path / "nan", progress=False)
    assert sorted(closed) == ["ckpt", "metrics"]
    step, state = params_of(tmp_path / "nan")
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
    # skip: warns and goes on, until max_skips in a row
    cfg = tiny_config(
        corpus,
        "optim.name='sgd'",
        "optim.lr=1e12",
        "optim.clip_norm=0.0",
        "nan_policy='skip'",
        "max_skips=2",
    )
    with pytest.raises(NonFiniteLossError, match="3 in a row"):
        train(cfg, tmp_path / "skip", progress=False)
    assert any(r.get("skipped") for r in read_metrics(tmp_path / "skip"))


def test_bad_inputs_are_clear_errors(corpus, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        train(tiny_config(empty), tmp_path / "a", progress=False)
    short = tmp_path / "short.txt"
    short.write_text("too short for a window")
    with pytest.raises(DataError, match="fewer than seq_len=32"):
        train(tiny_config(short), tmp_path / "b", progress=False)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"caf\xe9 " * 200)  # latin-1, not UTF-8
    with pytest.raises(DataError, match="not UTF-8 text"):
        train(tiny_config(binary), tmp_path / "bin", progress=False)
    # a validation split too small for one batch stops the run before any training step
    with pytest.raises(DataError, match="validation split holds"):
        train(tiny_config(corpus, "data.batch_size=256"), tmp_path / "v", progress=False)
    assert not (tmp_path / "v").exists()  # a failed start leaves no folder behind
    assert not (tmp_path / "a").exists() and not (tmp_path / "bin").exists()
    # a checkpoint made with one vocabulary, resumed with another
    train(tiny_config(corpus, "steps=4"), tmp_path / "c", progress=False)
    with pytest.raises(CheckpointMismatchError, match="vocab_size 256.*gives 300"):
        train(
            tiny_config(
                corpus,
                "data.tokenizer='bpe'",
                "data.bpe_vocab=300",
                f"data.cache_dir={str(tmp_path / 'bpe')!r}",
            ),
            tmp_path / "c",
            progress=False,
        )
    with pytest.raises(CheckpointMismatchError, match="d_model=32 .config: 64"):
        train(tiny_config(corpus, "model.d_model=64"), tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match="needs 2 devices, but 1 are visible"):
        Run(tiny_config(corpus, "mesh=(2, 1)"), tmp_path / "d")


# ----------------------------------------------------------------------------------------- CLI
def test_cli_train_eval_generate(corpus, tmp_path, capsys):
    out = str(tmp_path / "cli")
    args = [
        "--set",
        f"data.corpus={corpus}",
        "--set",
        "steps=4",
        "--set",
        "data.seq_len=32",
        "--set",
        "plot=False",
        "--out",
        out,
        "--no-progress",
    ]
    assert cli.main(["train", "--config", "shakespeare_transformer", *args]) == 0
    first = [r for r in read_metrics(out) if "first_step_s" in r]  # the compile wait, reported
    assert len(first) == 1 and first[0]["step"] == 1 and first[0]["first_step_s"] > 0
    assert cli.main(["eval", "--run", out]) == 0
    assert "bits/byte" in capsys.readouterr().out
    assert cli.main(["generate", "--run", out, "--prompt", "the", "--length", "8"]) == 0
    assert capsys.readouterr().out.startswith("the")
    assert cli.main(["train", "--config", "shakespeare_transformer", "--set", "steps=0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    assert cli.main(["eval", "--run", str(tmp_path / "nowhere")]) == 2
    assert "not a training run directory" in capsys.readouterr().err
    assert cli.main(["configs"]) == 0 and "quickstart" in capsys.readouterr().out


def test_quickstart_trains_hope_checkpoints_and_samples(corpus, tmp_path, capsys):
    out = tmp_path / "qs"
    code = cli.main(
        [
            "quickstart",
            "--steps",
            "3",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            f"data.corpus={corpus}",
            "--set",
            "data.seq_len=32",
            "--set",
            "log_every=1",
            "--set",
            "plot=False",
            "--set",
            "data.val_fraction=0.0",  # no validation split: no eval compile
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "train loss fell from" in text and "sample (temperature 0.8)" in text
    assert (out / "checkpoints/3").is_dir()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "hope_tiny"
    shutil.rmtree(out)


def test_cli_compile_cache_location_and_switch(tmp_path, monkeypatch):
    """The CLI keeps compiled programs in a persistent cache: one directory per CPU type under
    the user's cache home, ``NESTED_JAX_COMPILE_CACHE`` = a path or ``off``; a directory set
    through JAX's own configuration wins."""
    monkeypatch.delenv(cli.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    default = cli.compile_cache_dir()
    assert default.startswith(str(tmp_path / "xdg" / "nested_jax" / "xla"))
    assert default == cli.compile_cache_dir()  # the CPU tag is stable
    monkeypatch.setenv(cli.CACHE_ENV, "off")
    assert cli.compile_cache_dir() is None
    monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "mine"))
    assert cli.compile_cache_dir() == str(tmp_path / "mine")

    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        cli._enable_compile_cache()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
        assert (tmp_path / "mine").is_dir()
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "theirs"))
        cli._enable_compile_cache()  # the user's JAX setting is kept
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "theirs")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_progress_bar_says_when_it_compiles(corpus, tmp_path, caplog, capsys):
    """The bar starts after the first (compiling) step, evaluation time is taken out of its
    speed, and the log says that the first step compiles."""
    with caplog.at_level(logging.INFO, logger="nested_jax.train"):
        res = train(tiny_config(corpus, "steps=4", "eval_every=2"), tmp_path / "p", progress=True)
    assert res.step == 4
    assert "compiling the train step" in caplog.text and "first step" in caplog.text
    assert "4/4" in capsys.readouterr().err


def test_a_run_saved_before_the_hope_defaults_moved_loads_as_the_model_it_trained(
    tmp_path, monkeypatch
):
    """A run saved as ``hope_tiny`` before decisions D95 (its checkpoint's model config has no
    ``selfmod.gates``) trained what is now ``hope_paper_tiny``: it loads as that, with its
    parameters, instead of failing the checkpoint check against the new ``hope_tiny``."""
    from nested_jax.models.migrate import migrate_model_name
    from nested_jax.train import checkpoint as ckpt_lib
    from nested_jax.train.loop import load_run, train

    assert migrate_model_name("hope_tiny", {"selfmod": {"chunk": 2}}) == "hope_paper_tiny"
    assert migrate_model_name("hope_tiny", {"selfmod.gates": "linear"}) == "hope_tiny"
    assert migrate_model_name("tiny", {}) == "tiny"
    # Hope-Attention's default moved with decisions D99: a run without the online signal
    assert migrate_model_name("hope_attention_tiny", {"cms": {"signal": "teach"}}) == (
        "hope_attention_paper_tiny"
    )
    assert migrate_model_name("hope_attention_tiny", {"cms.signal": "online"}) == (
        "hope_attention_tiny"
    )
    corpus = write_corpus(tmp_path / "corpus")
    cfg = tiny_config(corpus, "steps=4", "model.n_layers=1", model="hope_paper_tiny")
    out = tmp_path / "run"
    train(cfg, out, progress=False)
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, "model": "hope_tiny"}))
    real = ckpt_lib.Checkpoints.metadata

    def before_d95(self, step):  # the checkpoint as a run of before the change wrote it
        meta = real(self, step)
        model = {**meta["model"]}
        model.pop("selfmod.gates", None), model.pop("cms.teach_path", None)
        return {**meta, "model": model}

    monkeypatch.setattr(ckpt_lib.Checkpoints, "metadata", before_d95)
    run, state, step = load_run(out)
    assert run.cfg.model == "hope_paper_tiny" and step == 4
    assert "gate" in state.params["layers"]["mixer"]
