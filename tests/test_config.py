"""Model configs (models/config.py, models/migrate.py): the registry, checks with clear errors,
sub-configs, and old runs' configs read as the models they were."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import (
    jitted,
    setup,
)

from nested_jax.models import CMSConfig, LanguageModel, ModelConfig, get_config, list_configs


def test_registry_sizes():
    assert {"tiny", "small"} <= set(list_configs())
    small = LanguageModel(get_config("small"))
    n = small.num_params(jax.eval_shape(small.init, jax.random.key(0)))
    assert 9e6 < n < 12e6
    assert get_config("tiny", n_layers=3).n_layers == 3


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="unknown config"):
        get_config("huge")
    with pytest.raises(ValueError, match="kind must be"):
        ModelConfig(kind="rnn")
    with pytest.raises(ValueError, match="divisible by n_heads"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="must be\\s+even"):
        ModelConfig(d_model=30, n_heads=2)
    with pytest.raises(ValueError, match="positive int"):
        ModelConfig(n_layers=0)
    model, params, tokens = setup("tiny")
    with pytest.raises(ValueError, match="integer array"):
        model.apply(params, tokens.astype(jnp.float32))
    with pytest.raises(ValueError, match="exceeds the model's max_len"):
        model.apply(params, jnp.zeros((1, 129), jnp.int32))


def test_configs_say_what_their_blocks_have():
    """``has_cms`` and ``attends`` (used instead of tests on ``kind``) for every registry kind."""
    want = {
        "tiny": (False, True),
        "titans_tiny": (False, False),
        "selfmod_tiny": (False, False),
        "hope_tiny": (True, False),
        "hope_attention_tiny": (True, True),
    }
    for name, (has_cms, attends) in want.items():
        c = get_config(name)
        assert (c.has_cms, c.attends) == (has_cms, attends), name
        model = LanguageModel(c)
        assert ("cms" in model.init(jax.random.key(0))["layers"]) == has_cms, name


def test_model_config_has_sub_configs_and_reads_old_runs():
    """Titans / self-modifying / CMS settings live in sub-configs; replace() takes a field, a
    sub-config dict or a dotted path; flat names of older runs are migrated, or refused with
    their new name."""
    from nested_jax.models.migrate import migrate_model_json

    cfg = get_config("hope_paper_tiny")  # (old runs were of this model, then named hope_tiny)
    assert isinstance(cfg.cms, CMSConfig) and cfg.cms.periods == (4, 8) and cfg.cms.chunk == 4
    a = cfg.replace(cms={"signal": "ntp"}, n_layers=3)
    b = cfg.replace(**{"cms.signal": "ntp", "n_layers": 3})
    assert a == b and a.cms.signal == "ntp" and a.cms.periods == (4, 8) and a.n_layers == 3
    assert get_config("hope_paper_tiny", cms={"signal": "ntp"}, n_layers=3) == a
    assert cfg.replace(cms=CMSConfig(periods=(8,))).cms.signal == "teach"
    assert ModelConfig.from_json(a.to_json()) == a
    with pytest.raises(ValueError, match="'cms_signal' is now 'cms.signal'"):
        cfg.replace(cms_signal="ntp")
    with pytest.raises(ValueError, match="unknown field 'cms.colour'"):
        cfg.replace(cms={"colour": 1})
    with pytest.raises(TypeError, match="cms must be a CMSConfig"):
        ModelConfig(cms=(8, 16))
    # a switch that is not a bool is refused by name, not read as a truth value
    for field, bad in (
        ("selfmod.target_grad", 0),
        ("selfmod.self_values", "false"),
        ("titans.inner_norm", None),
        ("cms.persistent", 1),
        ("first_order", "no"),
    ):
        with pytest.raises(TypeError, match=f"{field} must be True or False"):
            cfg.replace(**{field: bad})
    assert cfg.replace(**{"selfmod.target_grad": False}).selfmod.target_grad is False
    old = {k: v for k, v in cfg.to_json().items() if k not in ("titans", "selfmod", "cms")}
    old.update(mem_chunk=4, sm_chunk=2, cms_periods=[4, 8], cms_signal="ntp")
    assert migrate_model_json(old)["cms"] == {
        "periods": [4, 8],
        "signal": "ntp",
        "teach_path": "network",
    }
    assert ModelConfig.from_json(old) == cfg.replace(cms={"signal": "ntp"})
    # a run saved before attn_window and the ablation switches existed reads as the same model
    # (its checkpoint still matches); one saved before inner_norm does not (its default changed)
    now = cfg.to_json()
    before = {k: v for k, v in now.items() if k != "attn_window"}
    added = ("rule", "retention", "self_values")
    before["selfmod"] = {k: v for k, v in now["selfmod"].items() if k not in added}
    memory_fields = ("memory", "objective", "rule", "retention")  # the Titans layer's memory
    before["titans"] = {
        k: v for k, v in now["titans"].items() if k != "inner_norm" and k not in memory_fields
    }
    migrated = migrate_model_json(before)
    assert migrated["selfmod"] == now["selfmod"] and migrated["attn_window"] is None
    assert "inner_norm" not in migrated["titans"]
    assert {k: migrated["titans"][k] for k in memory_fields} == {
        k: now["titans"][k] for k in memory_fields
    }
    flat = {}
    for head, v in before.items():
        flat.update({f"{head}.{k}": x for k, x in v.items()} if isinstance(v, dict) else {head: v})
    assert migrate_model_json(flat)["selfmod.rule"] == "dgd"  # checkpoints' flat form too
    assert "titans.inner_norm" not in migrate_model_json(flat)
    # nor one saved before the momentum gate was capped (D82): its gate meant something else
    flat.pop("titans.beta_max")
    assert "titans.beta_max" not in migrate_model_json(flat)


def test_titans_memory_options_are_checked():
    with pytest.raises(ValueError, match="titans.memory must be one of"):
        get_config("titans_tiny", titans={"memory": "deep"})
    with pytest.raises(ValueError, match="titans.rule must be one of"):
        get_config("titans_tiny", **{"titans.rule": "dgd"})
    with pytest.raises(ValueError, match="kind='titans'"):
        get_config("hope_tiny", **{"titans.memory": "linear"})
    # the deep memory with other objectives / rules builds and is finite
    model, params, tokens = setup(
        "titans_tiny", n_layers=1, titans={"rule": "gd", "objective": "dot"}
    )
    assert model.block.memory.objective.__class__.__name__ == "DotProduct"
    assert np.all(np.isfinite(np.asarray(jitted(model, "apply")(params, tokens)[0])))


def test_registry_has_the_paper_scale_configs():
    from nested_jax.models import list_configs

    names = set(list_configs())
    assert {"hope_tiny", "hope_small", "hope_760m", "hope_1.3b"} <= names
    # the faithful reference at every size the default Hope has (its values: test_golden.py)
    for size in ("tiny", "small", "760m", "1.3b"):
        assert get_config(f"hope_paper_{size}").kind == "hope"
    assert get_config("selfmod_paper_tiny").kind == "selfmod"
    assert get_config("hope_attention_paper_tiny").kind == "hope_attention"
    for name, lo, hi in (("hope_760m", 6.5e8, 8.5e8), ("hope_1.3b", 1.15e9, 1.45e9)):
        model = LanguageModel(get_config(name))
        n = model.num_params(jax.eval_shape(model.init, jax.random.key(0)))
        assert lo < n < hi, (name, n)


def test_bad_model_configs():
    with pytest.raises(ValueError, match="cms.variant"):
        ModelConfig(cms={"variant": "parallel"})
    with pytest.raises(ValueError, match="cms.signal"):
        ModelConfig(cms={"signal": "ttt"})
    with pytest.raises(ValueError, match="multiple of the smallest"):
        ModelConfig(cms={"periods": (4, 6)})
    with pytest.raises(ValueError, match="divide the next"):
        ModelConfig(cms={"periods": (4, 8, 12), "variant": "nested"})
    with pytest.raises(ValueError, match="ints >= 0"):
        ModelConfig(cms={"periods": (4, -1)})
    with pytest.raises(ValueError, match="period >= 2"):
        ModelConfig(kind="hope_attention", cms={"periods": (1,)})
    with pytest.raises(ValueError, match="multiple of titans.chunk"):
        ModelConfig(kind="hope", cms={"periods": (6,)}, titans={"chunk": 4})
    with pytest.raises(ValueError, match="selfmod.main"):
        ModelConfig(selfmod={"main": "deep"})
    with pytest.raises(ValueError, match="selfmod.momentum"):
        ModelConfig(selfmod={"momentum": 1.5})


def test_cms_norm_is_a_mode_and_old_booleans_are_migrated():
    """A bool is not a mode: refused with a pointer to the migration, which reads the saved
    booleans of configs from before D86 (nested and flat forms, and a run's overrides)."""
    from nested_jax.models import ModelConfig
    from nested_jax.train.config import TrainConfig

    assert get_config("hope_paper_tiny").cms.norm == "period"
    with pytest.raises(TypeError, match="cms.norm is a mode"):
        get_config("hope_paper_tiny", cms={"norm": True})
    with pytest.raises(ValueError, match="cms.norm must be one of"):
        get_config("hope_paper_tiny", cms={"norm": "chunk"})
    saved = get_config("hope_paper_tiny").to_json()
    for old, new in ((True, "token"), (False, "none")):
        saved["cms"]["norm"] = old
        assert ModelConfig.from_json(saved).cms.norm == new
    run = TrainConfig(model="hope_paper_tiny", model_overrides=(("cms.norm", True),)).to_json()
    assert dict(TrainConfig.from_json(run).model_overrides)["cms.norm"] == "token"
