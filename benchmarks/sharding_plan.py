"""Memory per device of the paper-scale Hope configs on 8 / 64 / 256 devices: computed, not run.

For each model and device count, the training state (parameters and AdamW's two moments, as
`nested_jax.train` builds it) is laid out by the training system's own rule
(`nested_jax.train.sharding.param_sharding`, on an abstract mesh: no device is needed) for a
pure-FSDP mesh ``(data 1, fsdp D)`` and a hybrid one ``(data D / 8, fsdp 8)`` (parameters sharded
within groups of 8, e.g. one host's GPUs, replicated across them); the per-sample fast states
(memories and CMS levels, `LanguageModel.init_state`) follow the batch over every device, one
sequence per device. Shapes come from ``jax.eval_shape``. Activations and XLA's temporaries are
not included (they depend on the sequence length, the compiler and rematerialisation: see
``model_throughput``'s ``temp_gib`` for measured ones).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import AbstractMesh

from nested_jax.models import LanguageModel, get_config
from nested_jax.train.config import OptimConfig
from nested_jax.train.optimizers import make_optimizer
from nested_jax.train.sharding import param_sharding
from nested_jax.train.step import init_train_state

MODELS = ("hope_760m", "hope_1.3b")
DEVICES = (8, 64, 256)
GIB = 2.0**30


def _bytes_per_device(tree, mesh) -> tuple[float, float]:
    """``(bytes on one device, bytes of the leaves that stay replicated)``."""
    shardings = param_sharding(tree, mesh)
    per, rep = 0.0, 0.0
    for leaf, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
        nbytes = np.prod(s.shard_shape(leaf.shape), dtype=np.float64) * leaf.dtype.itemsize
        per += nbytes
        if "fsdp" not in tuple(s.spec):
            rep += nbytes
    return per, rep


def plan(name: str, devices=DEVICES) -> list[dict]:
    model = LanguageModel(get_config(name))
    opt = make_optimizer(OptimConfig(), 1000)
    state = jax.eval_shape(functools.partial(init_train_state, model, opt), jax.random.key(0))
    fast = jax.eval_shape(lambda p: model.init_state(p, 1), state.params)
    size = lambda t: sum(
        np.prod(x.shape, dtype=np.float64) * x.dtype.itemsize for x in jax.tree.leaves(t)
    )
    # the in-context state per sequence: its layers' (CMS levels and mixer memories), and the copy
    # at the last CMS chunk's start that a stream keeps (`LMState.start`)
    parts = {k: size(v) / GIB for k, v in fast.layers.items()}
    fast_bytes = size(fast)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    rows = []
    for d in devices:
        for data, fsdp in dict.fromkeys(((1, d), (max(1, d // 8), min(8, d)))):
            mesh = AbstractMesh((data, fsdp), ("data", "fsdp"))
            params, params_rep = _bytes_per_device(state.params, mesh)
            total, total_rep = _bytes_per_device(state, mesh)
            rows.append(
                {
                    "model": name,
                    "params": n_params,
                    "devices": d,
                    "mesh": {"data": data, "fsdp": fsdp},
                    "params_gib_per_device": params / GIB,
                    "train_state_gib_per_device": total / GIB,
                    "replicated_gib_per_device": total_rep / GIB,
                    "fast_state_gib_per_sequence": fast_bytes / GIB,
                    "fast_state_layers_gib_per_sequence": parts,
                    "unsharded_train_state_gib": _bytes_per_device(
                        state, AbstractMesh((1, 1), ("data", "fsdp"))
                    )[0]
                    / GIB,
                }
            )
    return rows


def run(quick: bool = False, repeats: int = 0, models=MODELS) -> dict:
    del repeats  # nothing is timed
    rows = []
    for name in models if not quick else ("hope_tiny",):
        rows += plan(name, (8,) if quick else DEVICES)
    for r in rows:
        print(
            f"{r['model']:>10} {r['devices']:>4} devices mesh {r['mesh']}: train state "
            f"{r['train_state_gib_per_device']:7.3f} GiB/device (unsharded "
            f"{r['unsharded_train_state_gib']:.2f}; replicated part "
            f"{r['replicated_gib_per_device']:.4f}), fast state {r['fast_state_gib_per_sequence']:.3f} "
            "GiB per sequence",
            flush=True,
        )
    return {"benchmark": "sharding_plan", "what": __doc__.splitlines()[0], "results": rows}
