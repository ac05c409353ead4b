"""Titans (models/titans.py): the linear-memory family as Titans layers (DeltaNet, linear attention),
the momentum gate capped where the step bound is computed, the step bound's scaling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import (
    LINEAR,
    jitted,
    setup,
)

from nested_jax.models import get_config
from nested_jax.models.layers import causal_conv, rms_norm, swiglu


@pytest.mark.parametrize("name", LINEAR)
def test_linear_memory_titans_layers_are_deltanet_and_linear_attention(name):
    """A Titans layer with a matrix memory and the GD rule is, written out token by token:
    DeltaNet ``W_t = W_{t-1} (alpha_t I - eta_t k_t k_t^T) + eta_t v_t k_t^T`` (``alpha = 1``
    ungated), or linear attention ``W_t = alpha_t W_{t-1} + eta_t v_t k_t^T``; token ``t`` reads
    ``W_{t-1} q_t`` (the prediction of ``v_t``, as every memory here)."""
    model, params, tokens = setup(name, length=11, n_layers=1)
    c = model.config
    assert c.titans.memory == "linear" and c.titans.rule == "gd"
    p = jax.tree.map(lambda a: a[0], params["layers"])
    x = params["embed"][tokens]
    got, _ = model.block(p, model.block.init_state(p, 2), x)
    b, t, d, nh, hd = 2, 11, c.d_model, c.n_heads, c.head_dim
    h = rms_norm(x, p["norm"])
    hist = jnp.zeros((b, c.titans.conv_width - 1, 3 * d))
    qkv = jax.nn.silu(causal_conv(p["conv"], h @ p["wqkv"], hist)[0]).reshape(b, t, 3, nh, hd)
    unit = lambda a: a / jnp.sqrt(jnp.sum(a * a, -1, keepdims=True) + 1e-6)
    q, k, v = unit(qkv[:, :, 0]), unit(qkv[:, :, 1]), qkv[:, :, 2]
    gates = (h @ p["w_gates"] + p["b_gates"][None, None]).reshape(b, t, 3, nh)
    eta = c.titans.eta_max * jax.nn.sigmoid(gates[:, :, 0])
    alpha = jax.nn.sigmoid(gates[:, :, 1]) if c.titans.retention else jnp.ones_like(eta)
    w = jnp.broadcast_to(p["memory"].w, (b, nh, hd, hd))
    ys = []
    for i in range(t):
        ys.append(jnp.einsum("bhvk,bhk->bhv", w, q[:, i]))
        e, a = eta[:, i, :, None, None], alpha[:, i, :, None, None]
        outer = v[:, i, :, :, None] * k[:, i, :, None, :]
        if c.titans.objective == "l2":  # the delta rule
            kk = k[:, i, :, :, None] * k[:, i, :, None, :]
            w = w @ (a * jnp.eye(hd)[None, None] - e * kk) + e * outer
        else:  # Hebbian
            w = a * w + e * outer
    y = jnp.stack(ys, axis=1).reshape(b, t, d)
    y = rms_norm(y, p["out_norm"]) * jax.nn.silu(h @ p["w_gate_out"])
    want = x + y @ p["wo"]
    want = want + swiglu(p["mlp"], rms_norm(want, p["mlp_norm"]))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-4)


def test_titans_momentum_gate_is_capped_where_the_step_bound_is_computed():
    """The momentum gate ``beta = beta_max sigmoid(.)`` never exceeds ``titans.beta_max``, and the
    inner steps' normalisation (NLMS) is computed at ``beta_max``: the bound then holds for every
    gate value. (An uncapped gate normalised at 0.9 learned beta ~ 0.9995 on a run of repeated
    bytes in the language-modelling grid and the momentum grew without bound; decisions D82.)
    With every gate saturated (largest rate, no forgetting, largest momentum) the memory state
    stays bounded on repeated and on changing bytes."""
    from nested_jax.memory import stable_step_norm

    model, params, _ = setup("titans_tiny", n_layers=1, max_len=512, titans={"chunk": 16})
    c = model.config.titans
    assert model.block.memory.step_norm == stable_step_norm(16, c.beta_max)
    lp = jax.tree.map(lambda a: a[0], params["layers"])
    h = model.config.n_heads
    beta0 = c.beta_max * jax.nn.sigmoid(lp["b_gates"][2 * h :])
    np.testing.assert_allclose(np.asarray(beta0), 0.9, rtol=1e-6)  # 0.9 at init, as before
    saturated = {
        **params,
        "layers": {
            **params["layers"],
            "b_gates": jnp.full_like(params["layers"]["b_gates"], 30.0),
            "w_gates": jnp.zeros_like(params["layers"]["w_gates"]),
        },
    }
    for text in (b" " * 512, b"To be, or not to be: " * 23 + b"x" * 6):
        tokens = jnp.asarray(np.frombuffer(text, np.uint8).astype(np.int32))[None]
        logits, state = jitted(model, "apply")(saturated, tokens)
        memory = state.layers["memory"].state  # weights and momenta, [layer, batch, ...]
        big = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(memory))
        assert np.all(np.isfinite(np.asarray(logits))) and big < 10.0, big
    with pytest.raises(ValueError, match="beta_max"):
        get_config("titans_tiny", **{"titans.beta_max": 1.0})


def test_step_bound_scales_every_deep_memorys_normalisation():
    """``titans.step_bound`` divides the NLMS strength of Titans' memory and of every memory of
    self-modifying Titans / Hope (main, k / v / q, eta / alpha): ``nu = C / ((1 - beta) bound)``;
    1 is the default and what earlier runs used; outside (0, 2] it is refused."""
    from nested_jax.memory import stable_step_norm
    from nested_jax.models.self_modifying import SelfModifyingTitans

    for bound in (1.0, 2.0):
        model, _, _ = setup("titans_tiny", n_layers=1, **{"titans.step_bound": bound})
        chunk = model.config.titans.chunk
        assert model.block.memory.step_norm == pytest.approx(chunk / 0.05 / bound)
        c = get_config(
            "hope_paper_tiny", **{"titans.step_bound": bound, "selfmod.momentum": None}
        )  # (chunks 4 / 2; the default's are one size)
        layer = SelfModifyingTitans(c)
        assert layer.main_memory.step_norm == pytest.approx(4 / bound)
        assert layer.proj_memory.step_norm == pytest.approx(2 / bound)
        assert layer.gate_memory.step_norm == pytest.approx(2 / bound)
    for bad in (0.0, 2.5):
        with pytest.raises(ValueError, match="titans.step_bound must be in"):
            get_config("hope_tiny", **{"titans.step_bound": bad})
    with pytest.raises(ValueError, match="step bound must be in"):
        stable_step_norm(4, 0.9, 3.0)
