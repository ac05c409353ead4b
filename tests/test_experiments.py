"""Each experiment's smoke mode runs and writes its JSON and PNG (the full runs are not tests)."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.continual_regression import run as continual
from experiments.toy_surface import run as toy


def test_toy_surface_smoke(tmp_path):
    payload = toy.run(smoke=True, out=tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data == json.loads(json.dumps(payload))
    assert (tmp_path / "surface.png").stat().st_size > 10_000
    names = {r["optimizer"] for r in data["results"]}
    assert {"momentum", "delta_momentum", "adam", "m3"} <= names
    for r in data["results"]:
        assert r["lr"] in data["config"]["lrs"]
        assert r["steps_to_tol"] is None or 1 <= r["steps_to_tol"] <= data["config"]["max_steps"]


def test_toy_surface_steps_to_tol():
    import numpy as np

    assert toy.steps_to(np.array([3.0, 2.0, 1e-5, 5.0]), 1e-4) == 3
    assert toy.steps_to(np.array([3.0, np.nan]), 1e-4) is None


@pytest.mark.parametrize("setting", ["shared", "orthogonal"])
def test_continual_regression_smoke(tmp_path, setting):
    continual.run(smoke=True, out=tmp_path, setting=setting)
    data = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "forgetting.png").stat().st_size > 10_000
    by = {r["optimizer"]: r for r in data["results"]}
    assert {"sgd", "momentum", "delta_momentum", "adam", "m3"} == set(by)
    if setting == "orthogonal":  # plain SGD cannot forget: its gradients never touch old tasks
        assert abs(by["sgd"]["forgetting_mean"]) < 1e-6
    else:  # shared directions: it does
        assert by["sgd"]["forgetting_mean"] > 1e-3
    assert by["sgd"]["old_subspace_momentum"] is None
    n = data["config"]["n_tasks"]
    assert len(by["momentum"]["old_subspace_momentum"]) == n - 1
    assert all(0.0 <= f <= 1.0 + 1e-6 for f in by["momentum"]["old_subspace_momentum"])


@pytest.mark.parametrize("mod", [toy, continual])
def test_experiment_cli_smoke(mod, tmp_path, capsys):
    mod.main(["--smoke", "--out", str(tmp_path)])
    assert "wrote" in capsys.readouterr().out


def test_knowledge_transfer_smoke(tmp_path):
    from experiments.knowledge_transfer import run as kt

    kt.run(smoke=True, out=tmp_path, seeds=(0, 1))
    data = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "levels.png").stat().st_size > 10_000
    mse = {k: v["mean"] for k, v in data["online_mse_held_out"].items()}
    assert all(math.isfinite(v) for v in mse.values())
    assert all(v["n"] == 2 for v in data["online_mse_held_out"].values())
    assert mse["nest (meta-learned init + medium + fast)"] < mse["predict zero"]
    for one in data["per_seed"]:
        first, last = one["meta_loss_first_last"]
        assert last < first  # the slow level learns, on every seed
    assert data["per_seed"][0]["online_mse_held_out"] != data["per_seed"][1]["online_mse_held_out"]
    assert len(data["what_each_level_learned"]) == 11
    for one in data["per_seed"]:  # the slow levels learn (init, backprop, generation)
        by = one["meta_loss_first_last_by_mechanism"]
        for name in ("initialization", "backprop", "generation"):
            assert by[name][1] < by[name][0], name
        assert all(math.isfinite(v) for v in by["generation_blind"])


def _kt_one_scan(init, members, keys, values, cfg, joint):
    """The backprop system written out as one scan (how the experiment ran it before
    ``run_nest`` had ``"joint"`` members): the medium accumulates its increments and applies them
    every ``medium_period`` tokens, the fast member writes every token."""
    from nested_jax.levels import fire, first_order_update
    from nested_jax.memory import LinearParams

    medium, fast = members
    period = cfg["medium_period"]
    med = medium.reset(LinearParams(init[None]))

    def step(carry, inp):
        st_m, pend, st_f = carry
        t, k, v = inp
        y_m, y_f = med.read_state(st_m, k), fast.read_state(st_f, k)
        cand = med.step(st_m, k, v - y_f if joint else v, cfg["eta_medium"])
        new_f = fast.step(st_f, k, v - y_m, cfg["eta_fast"])
        if cfg["first_order"]:
            cand, new_f = first_order_update(cand, st_m), first_order_update(new_f, st_f)
        pend = jax.tree.map(lambda p, c, s: p + (c - s), pend, cand, st_m)
        st_m, pend = fire(st_m, pend, (t + 1) % period == 0)
        return (st_m, pend, new_f), y_m + y_f

    zeros = jax.tree.map(jnp.zeros_like, med.state)
    carry = (med.state, zeros, fast.state)
    (st_m, _, st_f), preds = jax.lax.scan(step, carry, (jnp.arange(len(keys)), keys, values))
    return jnp.mean(jnp.sum((preds - values) ** 2, axis=-1)), (preds, st_m.w[0, 0], st_f.w[0, 0])


def test_knowledge_transfer_nests_equal_the_one_scan_form():
    """The experiment's nests through ``run_nest`` (one-way: the medium writes the value;
    backprop: it receives ``"joint"``) equal the same system written out as one scan: errors,
    first- and second-order meta-gradients, predictions and final states."""
    from experiments.knowledge_transfer import run as kt

    cfg = dict(dim=4, length=24, context_len=8, task_scale=0.5, context_scale=0.3, noise=0.02)
    cfg |= dict(medium_period=4, eta_medium=0.5, eta_fast=0.9)
    a = jax.random.normal(jax.random.key(0), (4, 4)) / 2
    task_kw = {k: cfg[k] for k in ("length", "context_len", "task_scale", "context_scale", "noise")}
    keys, values, _, _ = kt.make_tasks(jax.random.key(1), a, 1, **task_kw)
    members = kt.build(cfg, jax.random.key(2))
    init = a + 0.1
    for joint in (False, True):
        for first_order in (True, False):
            c = cfg | {"first_order": first_order}
            nest = lambda i, c=c, j=joint: kt.stream_error(
                i, members, keys[0], values[0], c, joint=j
            )[0]
            scan = lambda i, c=c, j=joint: _kt_one_scan(i, members, keys[0], values[0], c, j)[0]
            np.testing.assert_allclose(nest(init), scan(init), rtol=1e-5)
            np.testing.assert_allclose(
                jax.grad(nest)(init), jax.grad(scan)(init), rtol=1e-4, atol=1e-6
            )
        c = cfg | {"first_order": True}
        _, (preds, medium_w, fast_w) = _kt_one_scan(init, members, keys[0], values[0], c, joint)
        res = kt.stream_error(init, members, keys[0], values[0], c, joint=joint)[1]
        np.testing.assert_allclose(preds, res.predictions, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(medium_w, res.modules[0].state.w[0, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fast_w, res.modules[1].state.w[0, 0], rtol=1e-5, atol=1e-6)
    c = cfg | {"first_order": True}
    one_way = kt.stream_error(init, members, keys[0], values[0], c)[0]
    assert (
        abs(
            float(kt.stream_error(init, members, keys[0], values[0], c, joint=True)[0])
            - float(one_way)
        )
        > 1e-4
    )


def test_hope_ablation_smoke_and_resume(tmp_path):
    """Two cells (Hope with its CMS on / off at evaluation, and Transformer++) train, evaluate,
    aggregate and plot; a second call reuses the finished cells; parameter counts are matched."""
    from experiments.hope_ablation import run as abl
    from nested_jax.train.config import model_config

    payload = abl.run(smoke=True, variants=("hope", "transformer"), seeds=(0,), out=tmp_path)
    assert (tmp_path / "loss_by_position.png").stat().st_size > 10_000
    data = json.loads((tmp_path / "results.json").read_text())
    assert data == json.loads(json.dumps(payload))
    hope, tf = data["summary"]["shared/hope"], data["summary"]["shared/transformer"]
    assert abs(tf["params"] - hope["params"]) / hope["params"] < 0.02
    assert hope["tokens"] == tf["tokens"] == 3 * abl.SMOKE["batch"] * abl.SMOKE["seq_len"]
    cell = next(c for c in data["cells"] if c["variant"] == "hope")
    assert set(cell["bpb_by_position"]) == {"on", "off"}  # the CMS's updates on and off
    assert len(cell["bpb_by_position"]["on"]) == abl.SMOKE["eval_len"] - 1
    on, off = cell["bpb_heldout"]["on"], cell["bpb_heldout"]["off"]
    assert math.isfinite(on) and math.isfinite(off) and on != off
    assert set(next(c for c in data["cells"] if c["variant"] == "transformer")["bpb_heldout"]) == {
        "on"
    }
    again = abl.run(smoke=True, variants=("hope",), seeds=(0,), out=tmp_path)
    assert again["cells"] == data["cells"]  # finished cells are not rerun
    with pytest.raises(ValueError, match="not in the 'large' budget"):
        abl.run(budget="large", variants=("hope_ntp",), smoke=True, out=tmp_path)
    # the cells kept from before decisions D89: each its variant with the target gradient
    # stopped and nothing else changed
    for v in abl.BEFORE_D89:
        base = abl.model_spec(v.removesuffix("_sg_targets"), 64)
        assert abl.model_spec(v, 64) == (base[0], (*base[1], ("selfmod.target_grad", False)))
        cfg = model_config(abl.cell_config(v, "shared", 0, abl.SMOKE))
        assert cfg.selfmod.target_grad is False


def test_levels_demo_levels_do_their_jobs(capsys):
    """Both levels fire on schedule, the slow one ends near the persistent map, the nest beats
    each level alone; the script prints it and refuses a stream shorter than two slow periods."""
    from experiments.levels_demo import run as demo

    s = demo.run(length=4096)
    assert s["fired"] == {"slow": 4096 // 16, "fast": 4096}
    mse = s["mse"]
    assert mse["slow + fast"] < mse["slow alone"] < mse["predict zero"]
    assert s["slow_vs_persistent_map"] < 0.5
    demo.main(["--length", "512"])
    out = capsys.readouterr().out
    assert "level 'slow'" in out and "level 'fast'" in out and "fired 32 times" in out
    with pytest.raises(SystemExit):
        demo.main(["--length", "8", "--slow-period", "16"])


def test_continual_lm_smoke_and_resume(tmp_path):
    """Train, deploy on the stream of domains under every policy, report; a second call reads
    the finished cell instead of redoing it."""
    from experiments.continual_lm import run as clm

    payload = clm.main(["--smoke", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "continual_lm.png").stat().st_size > 5_000
    per_level = {p for p, v in clm.POLICIES.items() if "cms_levels" in v}  # CMS models only
    assert set(data["table"]) == {f"transformer/{p}" for p in set(clm.POLICIES) - per_level}
    row = data["table"]["transformer/reset"]
    assert {"shakespeare", "wikipedia", "shakespeare_again", "forgetting"} <= set(row)
    assert all(math.isfinite(v["mean"]) for v in row.values())
    assert row["forgetting"]["mean"] == 0.0  # a reset per document cannot forget
    assert len(data["by_position"]["transformer/reset"]) == 8  # along the document
    assert (tmp_path / "by_position.png").stat().st_size > 5_000
    cell = tmp_path / "transformer" / "seed0" / "cell.json"
    stamp = cell.stat().st_mtime_ns
    again = clm.main(["--smoke", "--out", str(tmp_path)])
    assert cell.stat().st_mtime_ns == stamp and again["cells"] == payload["cells"]
    # the full grid's models are matched to Hope's parameter count within 2%
    from nested_jax.models import count_params, get_config

    sizes = {
        m: count_params(get_config(c.model, **dict(c.model_overrides)))
        for m in clm.MODELS
        for c in [clm.cell_config(m, 0, clm.FULL, smoke=False)]
    }
    assert all(abs(n - sizes["hope"]) / sizes["hope"] < 0.02 for n in sizes.values()), sizes
    # Hope's cells from before decisions D89: Hope with the target gradient stopped, nothing else
    hope, kept = (clm.cell_config(m, 0, clm.FULL, smoke=False) for m in ("hope", "hope_sg_targets"))
    assert kept.model == hope.model
    assert kept.model_overrides == (*hope.model_overrides, ("selfmod.target_grad", False))


def test_dgd_vs_gd_smoke(tmp_path):
    """Every rule and memory runs at smoke size with finite errors at its best rate; DGD with the
    L2 objective converges to half its targets (error 1/4) where the proximal form recalls."""
    from experiments.dgd_vs_gd import run as dg

    payload = dg.run(smoke=True, out=tmp_path)
    assert (tmp_path / "dgd_vs_gd.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(payload))
    for part in ("by_rho", "by_length"):
        assert len(payload[part]) == 5
        for rows in payload[part].values():
            assert all(math.isfinite(r["mean"]) and r["eta"] in dg.SMOKE["etas"] for r in rows)
    keys, vals = dg.make_pairs(0, 4, 16, 0.0)
    keys, vals = keys[None], vals[None]
    mems = dg.deep(16)
    half = dg.recall_error(mems["linear, DGD (L2)"], 1, (1.0,), keys, vals, passes=40)
    exact = dg.recall_error(mems["linear, DGD (dot product: proximal)"], 1, (1.0,), keys, vals, 40)
    assert half[0, 0] == pytest.approx(0.25, abs=0.01) and exact[0, 0] < 1e-3


def test_class_incremental_smoke(tmp_path):
    """Every method learns the 5 split-digits tasks at smoke size; replay forgets least; the
    accuracy matrix is lower-triangular (a task is scored once it has been learned)."""
    from experiments.class_incremental import run as ci

    payload = ci.run(smoke=True, out=tmp_path)
    assert (tmp_path / "class_incremental.png").stat().st_size > 10_000
    digits = payload["results"]["digits"]
    assert set(digits) == set(ci.METHODS)
    for r in digits.values():
        acc = np.asarray(r["accuracy_matrix_mean"])
        assert np.all(acc[np.triu_indices(5, 1)] == 0) and np.all(acc[np.tril_indices(5)] >= 0)
        assert 0 <= r["average_accuracy"]["mean"] <= 1 and r["average_accuracy"]["n"] == 2
    assert digits["replay"]["forgetting"]["mean"] < digits["mlp"]["forgetting"]["mean"]


def test_optimizers_smoke(tmp_path):
    """Every optimizer trains the MLP (digits at smoke size) with its step timed; the best rate
    of each one's grid is reported with its loss curve."""
    from experiments.optimizers import run as opt

    payload = opt.run(smoke=True, out=tmp_path)
    assert (tmp_path / "optimizers.png").stat().st_size > 10_000
    assert set(payload["results"]) == set(opt.OPTIMIZERS)
    for r in payload["results"].values():
        assert len(r["loss_curve_mean"]) == opt.SMOKE["steps"] // opt.SMOKE["log_every"]
        assert r["step_ms"]["mean"] > 0 and 0 <= r["test_accuracy"]["mean"] <= 1
    assert payload["results"]["adamw"]["final_train_loss"]["mean"] < 2.3  # below chance (ln 10)


def test_optimizers_char_lm_smoke(tmp_path):
    """The character-level half: every optimizer (M3 and Muon through the training system's
    language-model setups) trains a Transformer++ on Shakespeare bytes and is scored in
    validation bits per byte; results go to ``char_lm/``."""
    from experiments.optimizers import run as opt

    payload = opt.run(smoke=True, out=tmp_path, task="lm")
    assert (tmp_path / "char_lm" / "optimizers.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "char_lm" / "results.json").read_text())["dataset"]
    assert set(payload["results"]) == set(opt.LM_OPTIMIZERS)
    for r in payload["results"].values():
        assert len(r["loss_curve_mean"]) == opt.LM_SMOKE["steps"] // opt.LM_SMOKE["log_every"]
        assert r["step_ms"]["mean"] > 0 and 0 < r["val_bpb"]["mean"] < 12
    runs = sorted((tmp_path / "char_lm" / "runs").glob("*.json"))
    assert len(runs) == len(opt.LM_OPTIMIZERS)  # one (optimizer, rate, seed) each at smoke size
    stamps = [p.stat().st_mtime_ns for p in runs]
    rec = json.loads(runs[0].read_text())
    assert "CPU cores" in rec["machine"] and rec["compile_s"] > 0 and rec["step_s"] > 0
    again = opt.run(smoke=True, out=tmp_path, task="lm")  # finished runs are read back
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    assert again["results"] == payload["results"]
    with pytest.raises(ValueError, match="task must be"):
        opt.run(smoke=True, out=tmp_path, task="cnn")


def test_mqar_data_and_smoke(tmp_path):
    """MQAR sequences: N pairs, a filler gap, every key queried once with its value next (the
    answer mask marks exactly those positions); models are matched to Hope's size; the smoke run
    writes results, plot and one resumable file per (model, seed)."""
    from experiments.common import selected_models
    from experiments.mqar import run as mq

    rng = np.random.default_rng(0)
    tokens, mask = mq.make_batch(rng, 3, 5, 40)
    assert tokens.shape == (3, 40) and mask.shape == (3, 39) and mask.sum() == 15
    for t, m in zip(tokens, mask, strict=True):
        pairs = dict(zip(t[:10:2], t[1:10:2], strict=True))
        assert len(pairs) == 5 and all(k < mq.N_KEYS <= v < 2 * mq.N_KEYS for k, v in pairs.items())
        assert np.all(t[10:20] >= 2 * mq.N_KEYS)  # filler only between pairs and queries
        for j in np.flatnonzero(m):  # each answer position: a key whose next token is its value
            assert pairs[t[j]] == t[j + 1]
        assert sorted(t[np.flatnonzero(m)]) == sorted(pairs)
    with pytest.raises(ValueError, match="need 24 tokens"):
        mq.make_batch(rng, 1, 6, 20)
    hope = mq.build("hope", smoke=False)[1]
    for name in mq.MODELS:
        assert abs(mq.build(name, smoke=False)[1] / hope - 1) < 0.05, name
    args = ["--smoke", "--models", "transformer", "deltanet", "--out", str(tmp_path)]
    payload = mq.main(args)
    assert set(payload["summary"]) == {"transformer", "deltanet"}
    for row in payload["summary"].values():
        assert set(row["accuracy"]) == {"32/4", "64/4"}
        assert all(0 <= a["mean"] <= 1 for a in row["accuracy"].values())
    assert (tmp_path / "mqar.png").stat().st_size > 10_000
    stamp = (tmp_path / "runs" / "deltanet-seed0.json").stat().st_mtime_ns
    assert mq.main(args)["runs"] == payload["runs"]  # finished runs are read back, not rerun
    pick = lambda models, report: selected_models(models, mq.MODELS, mq.DIAGNOSTICS, report)
    assert pick(["titans"], False) == ["titans"]
    assert pick(None, False) == [m for m in mq.MODELS if m not in mq.DIAGNOSTICS]
    assert pick(None, True) == list(mq.MODELS)  # --report shows the variants too
    only = mq.main([*args[:2], "transformer", "titans", *args[4:], "--report"])
    assert set(only["summary"]) == {"transformer"}  # --report trains nothing
    assert (tmp_path / "runs" / "deltanet-seed0.json").stat().st_mtime_ns == stamp
    probe = ["--smoke", "--models", "transformer", "--out", str(tmp_path / "probe")]
    payload = mq.main([*probe, "--steps", "4", "--seeds", "1"])  # a probe: other steps, seeds
    assert payload["setup"]["steps"] == 4 and list(payload["setup"]["seeds"]) == [1]
    assert [r["seed"] for r in payload["runs"]] == [1]
    with pytest.raises(ValueError, match="--steps must be at least 2"):
        mq.main([*probe, "--steps", "1"])
    # Hope's evaluation-time ablations: each stops one in-context learner and changes nothing else
    hope_cfg = mq.build("hope", smoke=True)[0].config
    ablated = mq.eval_ablations(hope_cfg)
    assert set(ablated) == {"cms_frozen", "generators_frozen"}
    assert ablated["cms_frozen"].cms.lr == 0 < hope_cfg.cms.lr
    assert ablated["cms_frozen"].replace(cms={"lr": hope_cfg.cms.lr}) == hope_cfg
    assert ablated["generators_frozen"].selfmod.adaptive is False
    assert ablated["generators_frozen"].replace(**{"selfmod.adaptive": True}) == hope_cfg
    assert set(mq.eval_ablations(mq.build("selfmod", smoke=True)[0].config)) == {
        "generators_frozen"
    }
    assert mq.eval_ablations(mq.build("titans", smoke=True)[0].config) == {}


@functools.cache
def _brute_force(lang: str, limit: int):
    """The language written as a membership test, and the set of prefixes of its strings of up to
    ``limit`` symbols, by enumeration (independent of the runner)."""
    import itertools
    import re

    from experiments.formal_languages import run as fl

    def member(w):
        if lang == "parity":
            return w.count("1") % 2 == 0
        if lang in ("aa", "abab"):
            return re.fullmatch({"aa": "(aa)*", "abab": "(abab)*"}[lang], w) is not None
        if lang in ("anbn", "anbncn"):
            shape = "a*b*" if lang == "anbn" else "a*b*c*"
            counts = {w.count(c) for c in ("ab" if lang == "anbn" else "abc")}
            return re.fullmatch(shape, w) is not None and len(counts) == 1
        for op, cl in ("()", "[]"):  # shuffle2: each kind balanced on its own
            depth = 0
            for c in w:
                depth += (c == op) - (c == cl)
                if depth < 0:
                    return False
            if depth:
                return False
        return True

    alpha = fl.ALPHABETS[lang]
    prefixes = set()
    for n in range(limit + 1):
        for w in map("".join, itertools.product(alpha, repeat=n)):
            if member(w):
                prefixes.update(w[:i] for i in range(n + 1))
    return prefixes, member


def _brute_force_rows(lang: str, s: str, limit: int):
    """What may follow each prefix of ``s`` and whether it is a member (see ``_brute_force``)."""
    from experiments.formal_languages import run as fl

    prefixes, member = _brute_force(lang, limit)
    alpha = fl.ALPHABETS[lang]
    rows = np.zeros((len(s) + 1, fl.N_LABELS), np.float32)
    for t in range(len(s) + 1):
        for i, c in enumerate(alpha):
            rows[t, i] = s[:t] + c in prefixes
        rows[t, fl.EOS] = member(s[:t])
    return rows, member


@pytest.mark.parametrize(
    "lang, limit, longest",
    [
        ("parity", 14, 12),
        ("aa", 14, 12),
        ("abab", 16, 12),
        ("anbn", 14, 12),
        ("anbncn", 9, 6),
        ("shuffle2", 8, 4),
    ],
)
def test_formal_language_targets_match_brute_force(lang, limit, longest):
    """Every label of every prefix (which symbols may follow, whether the prefix is a member)
    equals a brute-force enumeration of the language, and sampled strings are members of the
    length asked for (``longest``: strings whose prefixes complete within ``limit`` symbols)."""
    from experiments.formal_languages import run as fl

    rng = np.random.default_rng(0)
    for n in fl.string_lengths(lang, 1, longest):
        for _ in range(3):
            s = fl.sample_string(lang, int(n), rng)
            want, member = _brute_force_rows(lang, s, limit)
            assert len(s) == n and member(s), (lang, s)
            np.testing.assert_array_equal(fl.targets(lang, s), want, err_msg=f"{lang} {s!r}")
    with pytest.raises(ValueError, match="no strings"):
        fl.string_lengths("anbncn", 4, 5)


def test_formal_languages_batches_and_smoke(tmp_path):
    """Batches are BOS + string + padding with one row of labels per prefix; models are matched
    to Hope's size; the smoke run writes results, plot and one resumable file per run."""
    from experiments.formal_languages import run as fl

    rng = np.random.default_rng(1)
    tokens, labels, mask = fl.make_batch("shuffle2", rng, 5, (2, 10), pad_to=12)
    assert tokens.shape == (5, 13) and labels.shape == (5, 13, fl.N_LABELS)
    for t, y, m in zip(tokens, labels, mask, strict=True):
        n = int(m.sum()) - 1
        assert t[0] == fl.BOS and np.all(t[n + 1 :] == fl.PAD) and 2 <= n <= 10
        s = "".join(fl.ALPHABETS["shuffle2"][i] for i in t[1 : n + 1])
        np.testing.assert_array_equal(y[: n + 1], fl.targets("shuffle2", s))
        assert y[n, fl.EOS] == 1 and not y[n + 1 :].any()
    hope = fl.build("hope", smoke=False)[1]
    for name in fl.MODELS:
        assert abs(fl.build(name, smoke=False)[1] / hope - 1) < 0.05, name
    # the runs made before decisions D89 read back as their model with only the target stop
    assert {n.removesuffix("_sg_targets") for n in fl.BEFORE_D89} == {
        "selfmod",
        "selfmod_c1",
        "hope",
        "hope_c1",
        "hope_c1_gd",
        "hope_c1_neg",
    }
    for name in fl.BEFORE_D89:
        base = fl.build(name.removesuffix("_sg_targets"), smoke=True)[0].config
        assert base.selfmod.target_grad
        assert fl.build(name, smoke=True)[0].config == base.replace(
            **{"selfmod.target_grad": False}
        )
    args = ["--smoke", "--languages", "parity", "anbn", "--models", "transformer", "deltanet"]
    payload = fl.main([*args, "--out", str(tmp_path)])
    assert set(payload["summary"]) == {"parity", "anbn"}
    for rows in payload["summary"].values():
        assert set(rows) == {"transformer", "deltanet"}
        for row in rows.values():
            assert set(row["accuracy"]) == {"bin0", "bin1"}
            assert all(0 <= a["mean"] <= 1 for a in row["accuracy"].values())
    assert (tmp_path / "formal_languages.png").stat().st_size > 10_000
    stamp = (tmp_path / "runs" / "anbn-deltanet-seed0.json").stat().st_mtime_ns
    again = fl.main([*args, "--out", str(tmp_path), "--report"])
    assert again["runs"] == payload["runs"]  # read back, nothing retrained
    md = fl.table(again["summary"], ("bin0", "bin1")).splitlines()
    assert md[0] == "| model | parity | a^n b^n |" and len(md) == 4
    assert md[2].startswith("| Transformer++ | ") and md[2].endswith(" (1) |")
    assert (tmp_path / "runs" / "anbn-deltanet-seed0.json").stat().st_mtime_ns == stamp


def test_cms_levels_data_and_smoke(tmp_path):
    """Drifting facts: every label of every value position recomputed from the tokens alone (gap
    to the key's last statement, known = same value then, updated = the key had another value
    before, stale = the old value); models matched to the two-level CMS; smoke run and resume."""
    from experiments.cms_levels import run as cl

    changes = 0
    for seed in range(4):
        tokens, info = cl.make_batch(np.random.default_rng(seed), 3, 128, 4, 2)
        assert tokens.shape == (3, 128) and info["answer"].sum() == 3 * 64
        for b in range(3):
            seen = {}  # key -> list of values stated, in order, with positions
            for j in range(0, 128, 2):
                k, v = int(tokens[b, j]), int(tokens[b, j + 1])
                assert 0 <= k < cl.N_KEYS <= v < cl.N_KEYS + cl.N_VALUES
                hist = seen.setdefault(k, [])
                gap = j - hist[-1][0] if hist else 0
                known = bool(hist) and hist[-1][1] == v
                updated = known and len({val for _, val in hist}) > 1
                assert info["gap"][b, j] == gap and info["known"][b, j] == known, (b, j)
                assert info["updated"][b, j] == updated, (b, j)
                stale = hist[-1][1] if hist and not known else -1
                assert info["stale"][b, j] == stale, (b, j)
                changes += stale >= 0
                hist.append((j, v))
            assert not info["answer"][b, 1::2].any()
    assert changes > 0  # the mapping drifted and the stream saw it
    with pytest.raises(ValueError, match="even"):
        cl.make_batch(np.random.default_rng(0), 1, 9, 4, 1)
    ref = cl.build(cl.REFERENCE, smoke=False)[1]
    for name in cl.MODELS:
        assert abs(cl.build(name, smoke=False)[1] / ref - 1) < 0.05, name
    model = cl.build("swa", smoke=True)[0]  # the windowed models take the longest test length
    longest = jnp.zeros((1, max(cl.FULL["test_lens"])), jnp.int32)
    assert model.apply(model.init(jax.random.key(0)), longest)[0].shape[1] == longest.shape[1]
    pred = tokens[:, 1:].copy()  # a perfect predictor scores 1 wherever it is scored
    for k, (h, n) in cl.score(pred, tokens, info).items():
        assert h == (0 if k == "stale answer" else n), k
    args = ["--smoke", "--models", "swa", "cms2", "--out", str(tmp_path)]
    payload = cl.main(args)
    assert set(payload["summary"]) == {"swa", "cms2"}
    for row in payload["summary"].values():
        cats = row["accuracy"]["64"]
        assert "adaptation" in cats and "retention 1-16" in cats
        assert all(a is None or 0 <= a["mean"] <= 1 for a in cats.values())
    assert (tmp_path / "cms_levels.png").stat().st_size > 10_000
    stamp = (tmp_path / "runs" / "cms2-seed0.json").stat().st_mtime_ns
    assert cl.main([*args, "--report"])["runs"] == payload["runs"]
    assert (tmp_path / "runs" / "cms2-seed0.json").stat().st_mtime_ns == stamp


def test_hope_frontier_smoke_tokens_then_clock(tmp_path):
    """The frontier runner's two budgets: equal tokens, then equal seconds with each model's
    steps set from its own measured speed; finished cells are not rerun; a diverged cell is a
    recorded result."""
    from experiments.hope_frontier import run as fr

    fr.main(["--smoke", "--budget", "tokens", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    fast, paper = data["summary"]["tokens/c32_lin_res"], data["summary"]["tokens/hope_paper"]
    assert fast["steps"] == paper["steps"] == [fr.SMOKE["steps"]]
    assert math.isfinite(fast["val_bpb"]["mean"]) and fast["skipped_steps"] == 0
    cell = next(c for c in data["cells"] if c["variant"] == "c32_lin_res")
    assert cell["curve"] and cell["curve"][-1][1] == cell["tokens"]
    assert ["selfmod.gates", "linear"] in cell["overrides"]
    fr.main(["--smoke", "--budget", "clock", "--clock-seconds", "2", "--out", str(tmp_path)])
    clock = json.loads((tmp_path / "results.json").read_text())["cells"]
    rate = cell["median_tokens_per_s"]
    want = max(1, int(2 * rate / (fr.SMOKE["seq"] * fr.SMOKE["batch"])))
    got = next(c for c in clock if c["budget"] == "clock" and c["variant"] == "c32_lin_res")
    assert got["planned_steps"] == want
    again = fr.run_cell("c32_lin_res", "tokens", 0, tmp_path, 2.0, fr.SMOKE)
    assert again == cell  # not rerun
