"""Optimizers as memories: reduced cases equal optax, M3 equals Algorithm 1, memories readable."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nested_jax import optim
from nested_jax.memory import L2


def _grads(key, n, shape=(4, 3)):
    return jax.random.normal(key, (n,) + shape)


def _run(tx, params, grads):
    """Apply ``tx`` to a fixed gradient sequence (a pytree like ``params`` with a leading time
    axis, or one array used for every leaf of matching shape); returns every params iterate."""
    state = tx.init(params)
    if not isinstance(grads, dict):
        grads = jax.tree.map(lambda _: grads, params)

    def step(carry, g):
        p, s = carry
        u, s = tx.update(g, s, p)
        p = optax.apply_updates(p, u)
        return (p, s), p

    (_, state), ps = jax.lax.scan(step, (params, state), grads)
    return ps, state


# ------------------------------------------------------------------------- reduced cases
@pytest.mark.parametrize("decay", [0.0, 0.9])
def test_momentum_memory_equals_optax_sgd(decay):
    p0 = {"w": jnp.ones((4, 3))}
    grads = _grads(jax.random.key(0), 100)
    ours, _ = _run(optim.momentum_memory(0.05, decay), p0, grads)
    ref, _ = _run(optax.sgd(0.05, momentum=decay if decay else None), p0, grads)
    np.testing.assert_allclose(np.asarray(ours["w"]), np.asarray(ref["w"]), atol=1e-6, rtol=1e-6)


def test_adam_memory_equals_optax_adam():
    p0 = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    grads = {"w": _grads(jax.random.key(1), 100), "b": _grads(jax.random.key(10), 100, (3,))}
    tx_ref = optax.adam(1e-2)
    ours, _ = _run(optim.adam_memory(1e-2), p0, grads)
    with jax.numpy_dtype_promotion("standard"):  # optax's adam is not strict-clean
        ref, _ = _run(tx_ref, p0, grads)
    for k in p0:
        np.testing.assert_allclose(np.asarray(ours[k]), np.asarray(ref[k]), atol=1e-6, rtol=1e-6)


def test_adam_literal_is_appendix_b_formula():
    b1, b2, eps = 0.9, 0.999, 1e-8
    tx = optim.scale_by_adam_memory(b1, b2, eps, variant="literal")
    g = np.asarray(_grads(jax.random.key(2), 5))
    state = tx.init(jnp.zeros((4, 3)))
    m = np.zeros((4, 3))
    h = np.zeros((4, 3))
    for t in range(5):
        d, state = tx.update(jnp.asarray(g[t]), state)
        m, h = m + b1 * g[t], h + b2 * g[t] ** 2
        # m* = P M / H with P = sqrt(H / b2): the step is M / (sqrt(b2) (sqrt(H) + eps))
        np.testing.assert_allclose(np.asarray(d), m / (np.sqrt(b2) * (np.sqrt(h) + eps)), rtol=1e-5)


def test_delta_momentum_rule_and_reduction():
    decay, beta = 0.9, 0.5
    g = np.asarray(_grads(jax.random.key(3), 6), np.float64)
    tx = optim.scale_by_delta_momentum(decay, beta)
    state = tx.init(jnp.zeros((4, 3)))
    m = np.zeros((4, 3))
    for t in range(6):
        d, state = tx.update(jnp.asarray(g[t], jnp.float32), state)
        gh = g[t] / np.linalg.norm(g[t])
        m = decay * m - beta * gh * np.sum(gh * m) + g[t]
        np.testing.assert_allclose(np.asarray(d), m, rtol=1e-5, atol=1e-6)
    # beta = 0: heavy-ball momentum
    a, _ = _run(
        optim.delta_momentum(0.1, decay, beta=0.0),
        {"w": jnp.ones((4, 3))},
        _grads(jax.random.key(4), 20),
    )
    b, _ = _run(
        optax.sgd(0.1, momentum=decay), {"w": jnp.ones((4, 3))}, _grads(jax.random.key(4), 20)
    )
    np.testing.assert_allclose(np.asarray(a["w"]), np.asarray(b["w"]), atol=1e-6)


def test_delta_momentum_forgets_along_the_new_gradient():
    """Writing the same direction twice: the L2 memory decays the old copy, the dot one does not."""
    g = jnp.ones((4, 3))
    dot = optim.scale_by_momentum_memory(1.0)
    l2 = optim.scale_by_momentum_memory(1.0, objective=L2(), beta=1.0)
    for tx, expected in ((dot, 2.0), (l2, 1.0)):
        s = tx.init(g)
        _, s = tx.update(g, s)
        d, s = tx.update(g, s)
        np.testing.assert_allclose(np.asarray(d), expected * np.ones((4, 3)), rtol=1e-6)


def test_cubic_newton_schulz_is_one_gd_step_on_orthogonality():
    g = jax.random.normal(jax.random.key(5), (5, 3))
    g = g / jnp.linalg.norm(g)
    one = optim.newton_schulz(g, steps=1, coeffs="cubic", eps=0.0)
    np.testing.assert_allclose(
        np.asarray(one), np.asarray(optim.orthogonality_gd_step(g, 0.25)), atol=1e-6
    )


@pytest.mark.parametrize("shape", [(8, 5), (5, 8), (16, 16)])
def test_quintic_newton_schulz_orthogonalises(shape):
    x = jax.random.normal(jax.random.key(6), shape)
    o = optim.newton_schulz(x, steps=5)
    s = np.linalg.svd(np.asarray(o), compute_uv=False)
    # Muon's quintic maps singular values into roughly [0.7, 1.2]
    assert s.min() > 0.6 and s.max() < 1.25
    u, _, vt = np.linalg.svd(np.asarray(x), full_matrices=False)
    polar = u @ vt
    cos = np.sum(polar * np.asarray(o)) / (np.linalg.norm(polar) * np.linalg.norm(o))
    assert cos > 0.97


def test_momentum_plus_newton_schulz_is_muon_direction():
    """Muon (optax.contrib, no Nesterov) normalises an EMA momentum, ours a heavy-ball sum: the
    two differ by the scalar (1 - beta) / (1 - beta^t), which the Frobenius normalisation inside
    Newton-Schulz removes. (optax's ``muon`` alias additionally scales by
    sqrt(max(1, fan_out / fan_in)); see docs/decisions.md.)"""
    beta = 0.95
    ours = optax.chain(optim.scale_by_momentum_memory(beta), optim.scale_by_newton_schulz())
    ref = optax.contrib.scale_by_muon(beta=beta, nesterov=False)
    g = _grads(jax.random.key(7), 12, (6, 4))
    s1, s2 = ours.init(g[0]), ref.init(g[0])
    for t in range(12):
        d1, s1 = ours.update(g[t], s1)
        with jax.numpy_dtype_promotion("standard"):  # optax's own code is not strict-clean
            d2, s2 = ref.update(g[t], s2)
        np.testing.assert_allclose(np.asarray(d1), np.asarray(d2), atol=2e-5, rtol=2e-4)


# --------------------------------------------------------------------------------------- M3
def _m3_python(grads, *, b1, b2, b3, alpha, eps, f, variant, steps=5):
    """Algorithm 1 as a plain loop (NS from the library: its own tests cover it)."""
    ns = lambda x: np.asarray(optim.newton_schulz(jnp.asarray(x, jnp.float32), steps))
    m1 = np.zeros(grads[0].shape)
    m2, v, buf, o2 = m1.copy(), m1.copy(), m1.copy(), m1.copy()
    out = []
    for t, g in enumerate(grads):
        if variant == "literal":
            m1, v = m1 + b1 * g, v + b2 * g * g
        else:
            m1, v = b1 * m1 + g, b2 * v + (1 - b2) * g * g
        buf = buf + g
        out.append((ns(m1) + alpha * o2) / (np.sqrt(v) + eps))
        if (t + 1) % f == 0:
            m2 = m2 + b3 * buf if variant == "literal" else b3 * m2 + buf
            o2, buf = ns(m2), np.zeros_like(buf)
    return np.stack(out)


@pytest.mark.parametrize("variant", ["literal", "ema"])
def test_m3_follows_algorithm_1(variant):
    hp = dict(b1=0.9, b2=0.99, b3=0.8, alpha=0.5, eps=1e-8)
    g = np.asarray(_grads(jax.random.key(8), 11, (5, 4)))
    tx = optim.scale_by_m3(**hp, slow_period=4, variant=variant)
    state = tx.init(jnp.zeros((5, 4)))
    got = []
    for t in range(11):
        d, state = tx.update(jnp.asarray(g[t]), state)
        got.append(np.asarray(d))
    expected = _m3_python(g, **hp, f=4, variant=variant)
    np.testing.assert_allclose(np.stack(got), expected, rtol=2e-4, atol=2e-5)
    assert int(state.count) == 11
    reading = optim.read_memory(state)
    assert isinstance(reading, optim.M3Reading)
    np.testing.assert_allclose(np.asarray(reading.slow_orthogonal), np.asarray(state.o2))


def test_m3_sends_non_matrix_leaves_to_adamw():
    params = {"w": jnp.ones((5, 4)), "b": jnp.ones(4), "emb": jnp.ones((7, 4))}
    tx = optim.m3(0.01, embeddings=lambda p: {"w": False, "b": False, "emb": True})
    ref = optax.adamw(0.01, weight_decay=0.0)
    g = {k: jax.random.normal(jax.random.key(9), v.shape) for k, v in params.items()}
    other = {"b": params["b"], "emb": params["emb"]}
    with jax.numpy_dtype_promotion("standard"):  # optax's adamw is not strict-clean
        u, s = tx.update(g, tx.init(params), params)
        ru, _ = ref.update({"b": g["b"], "emb": g["emb"]}, ref.init(other), other)
    np.testing.assert_allclose(np.asarray(u["b"]), np.asarray(ru["b"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(u["emb"]), np.asarray(ru["emb"]), rtol=1e-6)
    assert not np.allclose(np.asarray(u["w"]), 0.0)
    assert isinstance(optim.read_memory(s), optim.M3Reading)


def test_m3_on_a_stack_of_matrices_is_m3_on_each_matrix():
    """A leaf [3, 5, 4] (e.g. three layers' weights) moves as three separate [5, 4] leaves."""
    hp = dict(b1=0.9, b2=0.99, b3=0.8, alpha=0.5, slow_period=2)
    g = _grads(jax.random.key(10), 5, (3, 5, 4))
    tx = optim.scale_by_m3(**hp)
    stack = tx.init({"w": jnp.zeros((3, 5, 4))})
    apart = tx.init({f"w{i}": jnp.zeros((5, 4)) for i in range(3)})
    for t in range(5):
        d, stack = tx.update({"w": g[t]}, stack)
        e, apart = tx.update({f"w{i}": g[t][i] for i in range(3)}, apart)
        for i in range(3):
            np.testing.assert_allclose(
                np.asarray(d["w"][i]), np.asarray(e[f"w{i}"]), rtol=1e-5, atol=1e-6
            )


def test_m3_stacked_leaves_in_a_language_model_train_step():
    """``optim.name=m3`` on a model: the layers' stacked weight matrices go to M3, their stacked
    norms and the embeddings to AdamW (before, every stacked layer leaf went to AdamW)."""
    from nested_jax.models import LanguageModel, get_config
    from nested_jax.train.config import OptimConfig
    from nested_jax.train.optimizers import make_optimizer

    model = LanguageModel(get_config("tiny", n_layers=2, d_model=16, d_ff=32))
    params = model.init(jax.random.key(0))
    opt = make_optimizer(OptimConfig(name="m3"), 10)
    labels = jax.tree.leaves(opt.init(params), is_leaf=lambda x: isinstance(x, optim.M3State))
    (m3_state,) = [x for x in labels if isinstance(x, optim.M3State)]
    shapes = {
        jax.tree_util.keystr(k): a.shape
        for k, a in jax.tree_util.tree_leaves_with_path(m3_state.m1)
        if not isinstance(a, optax.MaskedNode)
    }
    assert shapes, "no leaf went to M3"
    assert all(len(s) == 3 and s[0] == 2 for s in shapes.values()), shapes
    assert not any("embed" in k or "head" in k or "norm" in k for k in shapes), shapes


def test_bad_configs():
    for bad in ("cosine", "l2"):  # objectives are types (L2(), DotProduct()), never strings
        with pytest.raises(TypeError, match="objective must be an objective"):
            optim.scale_by_momentum_memory(objective=bad)
        with pytest.raises(TypeError, match="objective must be an objective"):
            optim.dmgd(1e-2, objective=bad)
    with pytest.raises(ValueError, match="variant must be"):
        optim.scale_by_adam_memory(variant="amsgrad")
    with pytest.raises(ValueError, match="slow_period"):
        optim.scale_by_m3(slow_period=0)
    with pytest.raises(ValueError, match="coeffs"):
        optim.scale_by_newton_schulz(coeffs="septic")
    with pytest.raises(ValueError, match="acts on matrices"):  # a vector: not a matrix stack
        optim.scale_by_m3().init({"b": jnp.ones(3)})
    with pytest.raises(ValueError, match="no nested_jax optimizer memory"):
        optim.read_memory(optax.adam(1e-3).init(jnp.ones(3)))


# ----------------------------------------------------------------------------- read_memory
def test_read_memory_through_wrappers():
    params = jnp.ones((4, 3))
    g = jnp.full((4, 3), 0.5)
    tx = optax.inject_hyperparams(optim.momentum_memory)(learning_rate=0.1, decay=0.5)
    s = tx.init(params)
    _, s = tx.update(g, s, params)
    _, s = tx.update(g, s, params)
    np.testing.assert_allclose(np.asarray(optim.read_memory(s)), 0.75 * np.ones((4, 3)))
    adam = optax.MultiSteps(optim.adam_memory(0.1), every_k_schedule=1)
    s = adam.init(params)
    with jax.numpy_dtype_promotion("standard"):  # MultiSteps' own code is not strict-clean
        _, s = adam.update(g, s, params)
    r = optim.read_memory(s, probe=params)
    assert isinstance(r, optim.AdamReading)
    np.testing.assert_allclose(np.asarray(r.momentum), 0.05 * np.ones((4, 3)), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(r.preconditioned_probe),
        1.0 / np.sqrt(0.001 * 0.25) * np.ones((4, 3)),
        rtol=1e-4,
    )


# --------------------------------------------------------------------------------------- DMGD
def test_dmgd_inner_step_is_gd_on_the_rows():
    """One update = one GD step (with decay) of each leaf's MLP memory on its normalised rows,
    then the direction is ||g_i|| m(u_i)."""
    from nested_jax.memory import L2, MLPMemory

    params = {"w": jnp.zeros((5, 3))}
    g = {"w": jax.random.normal(jax.random.key(20), (5, 3))}
    mem0 = optim.init_dmgd_memory(jax.random.key(21), params, hidden_factor=2.0)
    tx = optim.scale_by_dmgd(mem0, inner_lr=0.1, decay=0.9)
    d, s = tx.update(g, tx.init(params))
    memory = MLPMemory(6, objective=L2())
    norms = jnp.linalg.norm(g["w"], axis=-1, keepdims=True)
    u = g["w"] / norms
    grads = jax.grad(lambda p: jnp.mean(L2().loss(memory.apply(p, u), u)))(mem0[0])
    expected = jax.tree.map(lambda w, gw: 0.9 * w - 0.1 * gw, mem0[0], grads)
    for a, b in zip(jax.tree.leaves(s.memory[0]), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(d["w"]), np.asarray(norms * memory.apply(expected, u)), rtol=1e-5, atol=1e-6
    )
    answer = optim.read_memory(s, probe=g)
    np.testing.assert_allclose(np.asarray(answer["w"]), np.asarray(d["w"]), rtol=1e-5, atol=1e-6)


def test_low_rank_dmgd_memory_has_fixed_width_and_still_descends():
    """``hidden=r``: every leaf's memory has r hidden units whatever its row width; the same inner
    GD step (checked against the full-width formula above by construction: one code path); on
    an ill-conditioned quadratic it lowers the loss."""
    params = {"w": jnp.zeros((6, 16)), "b": jnp.zeros(16)}
    mem = optim.init_dmgd_memory(jax.random.key(0), params, hidden=2)
    assert all(m.w1.shape[-1] == 2 and m.w2.shape[-2] == 2 for m in mem)
    scale = jnp.linspace(0.5, 3.0, 16)
    loss = lambda p: (
        jnp.sum(scale[None] * (p["w"] - 1.0) ** 2) + jnp.sum(scale * (p["b"] + 1.0) ** 2)
    )
    tx = optim.dmgd(0.05, hidden=2, inner_lr=0.05)
    p, s = params, tx.init(params)
    start = float(loss(p))
    for _ in range(40):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        p = optax.apply_updates(p, u)
    assert float(loss(p)) < 0.05 * start
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="hidden must be None or a positive int"):
            optim.dmgd(0.1, hidden=bad)


def _quadratic_task(key):
    ka, kc = jax.random.split(key)
    a = jax.random.uniform(ka, (1, 4), minval=0.5, maxval=4.0)
    c = jax.random.normal(kc, (1, 4))
    return a, c


def _meta_loss(init_memory, tasks, steps=5, lr=0.05):
    """Mean loss after ``steps`` DMGD steps from w = 0, over a batch of quadratic tasks."""

    def one(task):
        a, c = task
        loss = lambda w: 0.5 * jnp.sum(a * (w["w"] - c) ** 2)
        tx = optim.dmgd(lr, init_memory, inner_lr=0.05)
        w = {"w": jnp.zeros((1, 4))}
        s = tx.init(w)
        for _ in range(steps):
            u, s = tx.update(jax.grad(loss)(w), s, w)
            w = optax.apply_updates(w, u)
        return loss(w)

    return jnp.mean(jax.vmap(one)(tasks))


def test_dmgd_initial_memory_can_be_meta_learned():
    """Differentiating through K unrolled DMGD steps and updating the initial memory lowers the
    meta-loss on held-out quadratics of the same family (several seeds)."""
    for seed in range(3):
        ktrain, ktest, kmem = jax.random.split(jax.random.key(100 + seed), 3)
        train = jax.vmap(_quadratic_task)(jax.random.split(ktrain, 16))
        test = jax.vmap(_quadratic_task)(jax.random.split(ktest, 16))
        mem = optim.init_dmgd_memory(kmem, {"w": jnp.zeros((1, 4))})
        before = float(_meta_loss(mem, test))
        meta_opt = optax.adam(3e-2)
        ms = meta_opt.init(mem)
        grad_fn = jax.jit(jax.value_and_grad(_meta_loss))
        with jax.numpy_dtype_promotion("standard"):  # optax's adam is not strict-clean
            for _ in range(30):
                _, g = grad_fn(mem, train)
                assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g))
                up, ms = meta_opt.update(g, ms, mem)
                mem = optax.apply_updates(mem, up)
        after = float(_meta_loss(mem, test))
        assert after < 0.8 * before, (seed, before, after)


# ------------------------------------------------------------------- preconditioned momentum
def test_preconditioned_momentum_identity_is_heavy_ball():
    p0 = {"w": jnp.ones((4, 3))}
    grads = _grads(jax.random.key(30), 50)
    a, _ = _run(optim.preconditioned_momentum(0.05, 0.9), p0, grads)
    b, _ = _run(optax.sgd(0.05, momentum=0.9), p0, grads)
    np.testing.assert_allclose(np.asarray(a["w"]), np.asarray(b["w"]), atol=1e-6)


def test_preconditioned_momentum_diagonal_and_random_features_formulas():
    g = np.asarray(_grads(jax.random.key(31), 4), np.float64)
    tx = optim.scale_by_preconditioned_momentum(0.8, preconditioner="diagonal", b2=0.9, eps=1e-8)
    s = tx.init(jnp.zeros((4, 3)))
    m = np.zeros((4, 3))
    v = np.zeros((4, 3))
    for t in range(4):
        d, s = tx.update(jnp.asarray(g[t], jnp.float32), s)
        v = 0.9 * v + 0.1 * g[t] ** 2
        m = 0.8 * m + g[t] / (np.sqrt(v / (1 - 0.9 ** (t + 1))) + 1e-8)
        np.testing.assert_allclose(np.asarray(d), m, rtol=1e-4, atol=1e-5)
    tx = optim.scale_by_preconditioned_momentum(
        0.8, preconditioner="random_features", num_features=7
    )
    s = tx.init(jnp.zeros((4, 3)))
    r = np.asarray(s.features[0], np.float64)
    assert r.shape == (7, 3)
    d, s = tx.update(jnp.asarray(g[0], jnp.float32), s)
    np.testing.assert_allclose(np.asarray(d), np.tanh(g[0] @ r.T) @ r / 7, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="preconditioner must be"):
        optim.scale_by_preconditioned_momentum(preconditioner="kfac")


def test_the_gradient_memory_is_an_associative_memory():
    """Every optimizer's momentum is one write: with the dot-product objective it is a
    ``LinearMemory(DotProduct(), GD())`` with a unit key (value = the gradient); with L2 it is
    delta momentum (decisions D18)."""
    from nested_jax.memory import L2, DotProduct, LinearMemory, LinearParams
    from nested_jax.optim import write_gradient_memory

    g = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([[3.0, 0.25]])}
    m = {"a": jnp.array([0.5, 0.5, -1.0]), "b": jnp.array([[-1.0, 2.0]])}
    got = write_gradient_memory(m, g, 0.8, 0.3)
    mem = LinearMemory(DotProduct())
    for name in ("a", "b"):
        w = m[name].reshape(1, 1, -1, 1)  # [batch, heads, d_v = params, d_k = 1]
        st = mem.init_state(LinearParams(w[0]), 1)
        st = mem.write(st, jnp.ones((1, 1, 1)), g[name].reshape(1, 1, -1), 0.3, 0.8)
        np.testing.assert_allclose(st.w.reshape(m[name].shape), got[name], rtol=1e-6)
    d = write_gradient_memory(m, g, 0.9, objective=L2(), beta=0.5)
    gh = g["a"] / jnp.linalg.norm(g["a"])
    want = 0.9 * m["a"] - 0.5 * gh * jnp.dot(gh, m["a"]) + g["a"]
    np.testing.assert_allclose(d["a"], want, rtol=1e-6)
    with pytest.raises(TypeError, match="objective"):
        write_gradient_memory(m, g, 0.9, objective="l2")


def test_muon_in_a_language_model_is_muon_per_layer_matrix():
    """``optim.name=muon``: every layer's weight matrix of a stacked ``[n_layers, m, n]`` leaf
    gets exactly what optax's Muon gives that matrix alone, and the embeddings, head and stacked
    norms get exactly its AdamW part (two steps, so the momenta matter)."""
    from nested_jax.models import LanguageModel, get_config
    from nested_jax.train.config import OptimConfig
    from nested_jax.train.optimizers import make_optimizer

    model = LanguageModel(get_config("tiny", n_layers=2, d_model=16, d_ff=32))
    params = model.init(jax.random.key(0))
    o = OptimConfig(
        name="muon", lr=0.02, weight_decay=0.01, clip_norm=0.0, schedule="constant", warmup_steps=0
    )
    opt = make_optimizer(o, 10)
    rng = np.random.default_rng(0)
    grads = [
        jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
        for _ in range(2)
    ]
    with jax.numpy_dtype_promotion("standard"):
        state = opt.init(params)
        for g in grads:
            upd, state = opt.update(g, state, params)
    flat = {jax.tree_util.keystr(k): a for k, a in jax.tree_util.tree_leaves_with_path(params)}
    got = {jax.tree_util.keystr(k): a for k, a in jax.tree_util.tree_leaves_with_path(upd)}
    matrices = [k for k, a in flat.items() if k.startswith("['layers']") and a.ndim == 3]
    assert len(matrices) >= 4, matrices
    for key, leaf in flat.items():
        gs = [
            {jax.tree_util.keystr(k): a for k, a in jax.tree_util.tree_leaves_with_path(g)}[key]
            for g in grads
        ]
        if key in matrices:  # Muon on each layer's matrix alone
            ref = optax.contrib.muon(0.02, weight_decay=0.01, adam_weight_decay=0.01, adam_b2=o.b2)
            for layer in range(leaf.shape[0]):
                with jax.numpy_dtype_promotion("standard"):
                    s = ref.init(leaf[layer])
                    for g in gs:
                        u, s = ref.update(g[layer], s, leaf[layer])
                np.testing.assert_allclose(
                    np.asarray(got[key][layer]), np.asarray(u), rtol=2e-4, atol=1e-6, err_msg=key
                )
        else:  # AdamW, Muon's own part
            ref = optax.adamw(0.02, b1=o.b1, b2=o.b2, weight_decay=0.01, nesterov=True)
            with jax.numpy_dtype_promotion("standard"):
                s = ref.init(leaf)
                for g in gs:
                    u, s = ref.update(g, s, leaf)
            np.testing.assert_allclose(
                np.asarray(got[key]), np.asarray(u), rtol=2e-4, atol=1e-7, err_msg=key
            )
