"""Reading model configs saved by earlier versions of nested_jax.

Runs and checkpoints store their model config as JSON. Three kinds of change since are read here,
so that an old run loads as the model it was:

* flat field names of nested_jax <= 0.5, before the sub-configs (``cms_periods`` is now
  ``cms.periods``): `LEGACY`, `migrate_field`;
* fields added later whose value then was what their default does now: `ADDED`;
* values whose type changed: ``cms.norm`` was a bool before decisions D86 (``True`` /
  ``False`` read as ``"token"`` / ``"none"``): `migrate_value`.

A field whose default changed behaviour (``titans.inner_norm``, ``selfmod.unit_values``) is not
filled in: an older run without it keeps failing the checkpoint check instead of loading as
another model.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ADDED",
    "LEGACY",
    "RENAMED",
    "migrate_field",
    "migrate_model_json",
    "migrate_model_name",
    "migrate_value",
]

# The flat field names of nested_jax <= 0.5 (runs saved before the sub-configs): old -> new path.
LEGACY = {
    "mem_chunk": "titans.chunk",
    "mem_expansion": "titans.expansion",
    "eta_max": "titans.eta_max",
    "conv_width": "titans.conv_width",
    "inner_norm": "titans.inner_norm",
    **{
        f"sm_{f}": f"selfmod.{f}"
        for f in ("chunk", "adaptive_q", "momentum", "main", "adaptive", "unit_values")
    },
    **{
        f"cms_{f}": f"cms.{f}"
        for f in ("periods", "variant", "signal", "lr", "learn_lr", "norm", "persistent")
    },
}


def migrate_value(path: str, value: Any) -> Any:
    """A saved value of the field ``path`` as today's config takes it (``cms.norm``: a bool of
    runs saved before D86 becomes ``"token"`` / ``"none"``); other values unchanged."""
    if path == "cms.norm" and isinstance(value, bool):
        return "token" if value else "none"
    return value


def migrate_field(name: str) -> str:
    """A model config field's path today, given its name in a run saved before the sub-configs
    (``"cms_periods"`` -> ``"cms.periods"``); other names unchanged."""
    return LEGACY.get(name, name)


# Fields added after runs were saved whose value then was what their default does now: a saved
# config without them gets them (so a checkpoint from before still matches its config). A field
# whose default changed behaviour (``titans.inner_norm``, ``selfmod.unit_values``) is not here:
# an older run without it keeps failing the checkpoint check instead of loading as another model.
ADDED = {
    "attn_window": None,
    "titans.memory": "mlp",
    "titans.objective": "l2",
    "titans.rule": "momentum",
    "titans.retention": True,
    "titans.step_bound": 1.0,
    "selfmod.rule": "dgd",
    "selfmod.retention": True,
    "selfmod.self_values": True,
    "selfmod.gates": "memory",
    "cms.teach_path": "network",
}


def migrate_model_json(d: dict) -> dict:
    """A saved model config (``dataclasses.asdict`` form) with any flat field of older runs
    (``cms_periods``, ``sm_chunk``, ``mem_chunk``, ...) moved into its sub-config, and the fields
    added since that leave older models as they were (``attn_window``, ``selfmod.rule``, ...)
    filled in, and old values read as today's (`migrate_value`)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    for old, new in LEGACY.items():
        if old in out:
            head, field = new.split(".")
            out.setdefault(head, {})[field] = out.pop(old)
    dotted = any("." in k for k in out)  # the flat form (``"cms.periods": ...``) of checkpoints
    for path, value in ADDED.items():
        head, _, field = path.partition(".")
        if not field or dotted:
            out.setdefault(path, value)
        elif isinstance(out.get(head), dict):
            out[head].setdefault(field, value)
    for key in list(out):
        if isinstance(out[key], dict):
            out[key] = {f: migrate_value(f"{key}.{f}", v) for f, v in out[key].items()}
        else:
            out[key] = migrate_value(key, out[key])
    return out


# Registry names whose model changed when Hope's defaults were chosen by quality per unit of
# compute (decisions D95, D99; 2026-12-07): what a run saved before under the key trained is now
# the value. Such a run's saved model config has no ``selfmod.gates`` (added with D95), or for
# Hope-Attention (changed with D99) a CMS signal other than ``"online"``.
RENAMED = {
    "hope_tiny": "hope_paper_tiny",
    "hope_small": "hope_paper_small",
    "hope_760m": "hope_paper_760m",
    "hope_1.3b": "hope_paper_1.3b",
    "selfmod_tiny": "selfmod_paper_tiny",
    "hope_attention_tiny": "hope_attention_paper_tiny",
}


def _field(saved: dict, path: str):
    """The value of ``path`` (``"cms.signal"``) in a saved model config, nested or flat."""
    if path in saved:
        return saved[path]
    head, _, field = path.partition(".")
    return (saved.get(head) or {}).get(field)


def migrate_model_name(name: str, saved_model: dict) -> str:
    """The registry name of the model a run saved under ``name`` trained, given the model config
    its checkpoint holds (``saved_model``, nested or flat): ``name`` itself, or for a run saved
    before decisions D95 (D99 for Hope-Attention) under a name whose model moved, that model's
    new name (``"hope_tiny"`` -> ``"hope_paper_tiny"``)."""
    if name not in RENAMED:
        return name
    if name == "hope_attention_tiny":
        current = _field(saved_model, "cms.signal") == "online"
    else:
        current = _field(saved_model, "selfmod.gates") is not None
    return name if current else RENAMED[name]
