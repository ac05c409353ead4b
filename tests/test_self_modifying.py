"""Self-modifying Titans (paper §5.2-5.3; the sequence layer of Hope).

The generic model properties (parallel == reference == streaming, causality, batch isolation, no
recompilation, training lowers the loss) are in test_lm.py, and Hope's own in test_hope.py;
here: the layer's variants, its meta-gradient through the inner loop, and its stability.
"""

import jax
import numpy as np
import pytest
from jax.test_util import check_grads
from model_helpers import check_prefix_then_stream, jitted, meta_leaves, setup

VARIANTS = [
    {"selfmod.adaptive_q": True},
    {"selfmod.momentum": None, "titans.chunk": 3, "selfmod.chunk": 2},
    {"titans.inner_norm": False, "selfmod.unit_values": False},  # the paper's literal rates
    # the Table 6 ablations at once: plain GD, no retention, shared values
    {"selfmod.rule": "gd", "selfmod.retention": False, "selfmod.self_values": False},
    # one chunk size for every memory: the stacked (fused) parallel form, with either gates
    {"titans.chunk": 4, "selfmod.chunk": 4},
    {"titans.chunk": 4, "selfmod.chunk": 4, "selfmod.gates": "linear", "first_order": True},
    {"selfmod.gates": "linear", "selfmod.adaptive_q": True},
]


def test_ablation_switches_change_what_the_memories_do():
    """Each of the "w/o DGD" / "w/o weight decay" / "w/o self-generated values" switches changes
    the layer's output (from the same parameters); their memories use the rule and targets
    they say (plain GD with momentum, no self target on the vector memories)."""
    from nested_jax.memory import DGD, Momentum
    from nested_jax.models.self_modifying import SelfModifyingTitans

    model, params, tokens = setup("selfmod_tiny", n_layers=1, length=16)
    base, _ = jax.jit(model.apply)(params, tokens)
    for switch in ({"rule": "gd"}, {"retention": False}, {"self_values": False}):
        m, _, _ = setup("selfmod_tiny", n_layers=1, length=16, selfmod=switch)
        out, _ = jax.jit(m.apply)(params, tokens)
        assert np.isfinite(out).all() and float(np.abs(out - base).max()) > 1e-4, switch
    layer = SelfModifyingTitans(model.config.replace(selfmod={"rule": "gd", "self_values": False}))
    assert isinstance(layer.main_memory.rule, Momentum) and layer.main_memory.rule.beta == 0.9
    assert not layer.main_memory.self_target and not layer.proj_memory.self_target
    assert layer.gate_memory.self_target  # the scalar eta / alpha memories keep theirs
    assert isinstance(SelfModifyingTitans(model.config).proj_memory.rule, DGD)
    with pytest.raises(ValueError, match="selfmod.rule"):
        model.config.replace(selfmod={"rule": "adam"})


@pytest.mark.parametrize("overrides", VARIANTS)
def test_variants_parallel_equals_streaming(overrides):
    """Each variant: the parallel form == a parallel prefix (ending mid-chunk) continued by
    token-by-token streaming in pieces of 3."""
    model, params, tokens = setup("selfmod_tiny", length=11, **overrides)
    par, s_par = jitted(model, "apply")(params, tokens)
    check_prefix_then_stream(model, params, tokens, par, s_par, start=5, piece=3)


@pytest.mark.parametrize("name", ["selfmod_tiny", "selfmod_paper_tiny"])
def test_check_grads_through_the_inner_loop(name):
    """Numerical vs autodiff directional derivatives of the loss w.r.t. the initial states of the
    generator (k, v (, eta, alpha: the reference's gate memories)) and main memories: the
    meta-gradient through every inner update (stacked in one call by default)."""
    model, params, tokens = setup(name, batch=1, length=8, d_model=16, d_ff=16)
    meta = meta_leaves(params)
    assert {"proj", "main"} | ({"gate"} if "paper" in name else set()) == set(meta)

    @jax.jit
    def f(meta):
        mixer = {**params["layers"]["mixer"], **meta}
        return model.loss({**params, "layers": {**params["layers"], "mixer": mixer}}, tokens)

    check_grads(f, (meta,), order=1, modes=("rev",), eps=5e-3, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", ["titans_tiny", "selfmod_tiny"])
def test_memory_layers_stay_finite_at_head_dim_64_over_long_sequences(name):
    """Regression: with head dimension 64 (memory hidden 128) the initial inner learning rate
    used to exceed the MLP memory's stability bound and the logits became NaN after ~50 tokens."""
    model, params, tokens = setup(
        name,
        batch=1,
        length=512,
        d_model=128,
        n_heads=2,
        n_layers=1,
        max_len=512,
        titans={"chunk": 16},
    )
    logits, _ = jitted(model, "apply")(params, tokens)
    assert np.all(np.isfinite(np.asarray(logits)))


# --- the two-pass teach signal -------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"selfmod.gates": "linear", "selfmod.adaptive_q": True},
        {"selfmod.momentum": None, "first_order": True},
    ],
)
def test_stacked_memories_equal_the_memories_one_after_the_other(monkeypatch, overrides):
    """With one chunk size, the main and k / v (/ q) memories run as one stacked memory call per
    chunk (`SelfModifyingTitans.fused`): the loss and every gradient equal running the
    generators' scan and then the main memory's, as for different chunk sizes (a length with a
    tail included)."""
    from nested_jax.models.self_modifying import SelfModifyingTitans

    model, params, tokens = setup(
        "selfmod_tiny", length=19, **{"titans.chunk": 4, "selfmod.chunk": 4, **overrides}
    )
    assert SelfModifyingTitans(model.config).fused
    fused = jax.value_and_grad(model.loss)(params, tokens)
    monkeypatch.setattr(SelfModifyingTitans, "fused", property(lambda self: False))
    apart = jax.value_and_grad(model.loss)(params, tokens)
    np.testing.assert_allclose(fused[0], apart[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(fused[1]), jax.tree.leaves(apart[1]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_linear_gates_replace_the_gate_memories():
    """``selfmod.gates="linear"`` (the default): no eta / alpha memories (no state, no
    parameters), a learned map per head that gets an outer gradient; the gate memories
    (``"memory"``) give another model."""
    model, params, tokens = setup("selfmod_tiny", length=16, **{"selfmod.gates": "linear"})
    mixer = params["layers"]["mixer"]
    assert "gate" not in mixer and mixer["w_gates"].shape[-2:] == (4, 16)  # [2H, head_dim]
    state = model.init_state(params, 2)
    assert state.layers["gen"].state[1] is None
    g = jax.jit(jax.grad(model.loss))(params, tokens)
    assert float(np.abs(g["layers"]["mixer"]["w_gates"]).sum()) > 0
    ref, ref_params, _ = setup("selfmod_tiny", length=16, **{"selfmod.gates": "memory"})
    assert (
        "gate" in ref_params["layers"]["mixer"] and "w_gates" not in ref_params["layers"]["mixer"]
    )
    loss = jax.jit(model.loss)(params, tokens)
    assert (
        np.isfinite(loss) and abs(float(loss) - float(jax.jit(ref.loss)(ref_params, tokens))) > 1e-6
    )
