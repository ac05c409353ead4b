"""Training configuration: dataclasses, named configs, ``key=value`` overrides, validation.

``get_train_config("quickstart", ["steps=50", "data.seq_len=64", "model.d_model=64"])`` returns a
validated `TrainConfig`. Overrides name a field by its dotted path (``data.*``, ``optim.*``,
``model.*`` for any `ModelConfig` field, or a top-level field); the value
is parsed as a Python literal (``3``, ``1e-3``, ``True``, ``(16, 64)``, ``None``) or else taken as a
string. Everything is checked here, before anything is loaded or compiled.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Sequence

from nested_jax.models.config import ModelConfig, check_field, get_config, list_configs
from nested_jax.models.migrate import migrate_field, migrate_value
from nested_jax.train.optimizers import OPTIMIZERS

__all__ = [
    "ConfigError",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "get_train_config",
    "list_train_configs",
    "apply_overrides",
    "model_config",
]

SCHEDULES = ("constant", "cosine", "linear")
NAN_POLICIES = ("stop", "skip")


class ConfigError(ValueError):
    """A bad training configuration (the message names the field and what to do)."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the tokens come from (see `nested_jax.train.data`).

    corpus: ``"shakespeare"``, ``"wikipedia"`` or a path (text file, folder of ``*.txt``, ``.npy``).
    tokenizer: ``"byte"`` (vocabulary 256) or ``"bpe"`` (trained on the training split, cached).
    bpe_vocab: the BPE vocabulary size. seq_len: tokens per training window.
    batch_size: windows per step (global, over all hosts and devices).
    val_fraction: share of documents held out. eval_batches: validation batches per evaluation.
    cache_dir: where trained BPE vocabularies are cached.
    """

    corpus: str = "shakespeare"
    tokenizer: str = "byte"
    bpe_vocab: int = 4096
    seq_len: int = 128
    batch_size: int = 8
    val_fraction: float = 0.05
    eval_batches: int = 4
    cache_dir: str = ".cache/nested_jax"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The outer optimizer. name: one of ``OPTIMIZERS`` (``nested_jax.optim`` memories included).
    lr: peak learning rate; schedule: ``constant`` / ``cosine`` / ``linear`` decay to
    ``lr * final_lr_fraction`` after ``warmup_steps`` of linear warm-up. clip_norm: global
    gradient-norm clip (``0`` = off). weight_decay: decoupled (``adamw``, ``m3``)."""

    name: str = "adamw"
    lr: float = 3e-3
    schedule: str = "cosine"
    warmup_steps: int = 10
    final_lr_fraction: float = 0.1
    clip_norm: float = 1.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.99


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run.

    model: a model registry name (``nested_jax.models.list_configs()``); model_overrides: fields
    of its `ModelConfig` to replace (``--set model.d_model=64``). The model's
    ``vocab_size`` is set from the tokenizer.
    steps: optimizer steps. seed: parameters and everything random. log_every / eval_every /
    ckpt_every: in steps (``0`` = never; a final checkpoint and evaluation always happen).
    keep: checkpoints kept (the newest). nan_policy: on a non-finite loss or gradient the update is
    never applied; ``"stop"`` ends the run with an error, ``"skip"`` goes on (at most
    ``max_skips`` in a row). mesh: ``(data, fsdp)`` device counts (``(0, 1)``: all devices on
    ``data``). distributed: call ``jax.distributed.initialize()`` (multi-host).
    tensorboard: also write TensorBoard events (needs ``tensorboardX``). plot: a PNG loss curve
    at the end (needs ``matplotlib``). step_sleep: seconds to sleep after each step (tests use it
    to kill a run mid-way; leave at 0). max_minutes: a budget of training time (``0`` = none):
    the run stops, checkpoints and evaluates once its steps have taken that long, counted across
    resumes and without the first step's compile (the same budget for every model gives the
    comparison at equal wall-clock); run it again with a larger budget to go on.
    """

    model: str = "hope_tiny"
    model_overrides: tuple = ()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    steps: int = 200
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    ckpt_every: int = 100
    keep: int = 3
    nan_policy: str = "stop"
    max_skips: int = 10
    mesh: tuple = (0, 1)
    distributed: bool = False
    tensorboard: bool = False
    plot: bool = True
    step_sleep: float = 0.0
    max_minutes: float = 0.0

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_overrides"] = [list(kv) for kv in self.model_overrides]
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["data"] = DataConfig(**d["data"])
        d["optim"] = OptimConfig(**d["optim"])
        d["model_overrides"] = tuple(  # flat names of runs saved before the sub-configs
            (
                migrate_field(k),
                migrate_value(migrate_field(k), tuple(v) if isinstance(v, list) else v),
            )
            for k, v in d["model_overrides"]
        )
        d["mesh"] = tuple(d["mesh"])
        return cls(**d)


def _parse(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _coerce(path: str, value, current):
    """Check an override's type against the field's current value."""
    if isinstance(current, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):  # as a shell user types
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be True or False, got {value!r}.")
    elif isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}.")
    elif isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path} must be a number, got {value!r}.")
        value = float(value)
    elif isinstance(current, str):
        value = str(value)
    elif isinstance(current, tuple):
        if not isinstance(value, tuple | list):
            raise ConfigError(f"{path} must be a tuple such as (16, 64), got {value!r}.")
        value = tuple(value)
    return value


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Apply ``key=value`` strings (dotted keys) to a config; unknown keys are errors."""
    model_ov = dict(cfg.model_overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value.")
        key, text = item.split("=", 1)
        key, value = key.strip(), _parse(text.strip())
        head, _, field = key.partition(".")
        if head == "model" and field:
            try:
                model_ov[check_field(field)] = value
            except ValueError as e:
                raise ConfigError(f"model.{field}: {e}") from e
        elif head in ("data", "optim") and field:
            sub = getattr(cfg, head)
            if field not in {f.name for f in dataclasses.fields(sub)}:
                raise ConfigError(
                    f"unknown field {key!r}; {head}.* fields: "
                    f"{[f.name for f in dataclasses.fields(sub)]}."
                )
            value = _coerce(key, value, getattr(sub, field))
            cfg = dataclasses.replace(cfg, **{head: dataclasses.replace(sub, **{field: value})})
        elif not field and key in {f.name for f in dataclasses.fields(TrainConfig)} - {
            "data",
            "optim",
            "model_overrides",
        }:
            cfg = dataclasses.replace(cfg, **{key: _coerce(key, value, getattr(cfg, key))})
        else:
            top = [
                f.name
                for f in dataclasses.fields(TrainConfig)
                if f.name not in ("data", "optim", "model_overrides")
            ]
            raise ConfigError(
                f"unknown config key {key!r}; use a top-level field ({top}) or data.*, optim.*, "
                "model.*."
            )
    return dataclasses.replace(cfg, model_overrides=tuple(sorted(model_ov.items())))


def model_config(cfg: TrainConfig, vocab_size: int | None = None) -> ModelConfig:
    """The run's `ModelConfig` (registry entry + overrides, vocabulary from the data)."""
    ov = dict(cfg.model_overrides)
    if vocab_size is not None:
        ov["vocab_size"] = vocab_size
    try:
        return get_config(cfg.model, **ov)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model config: {e}") from e


def validate(cfg: TrainConfig) -> TrainConfig:
    """Raise `ConfigError` naming the first bad value; return ``cfg``."""
    d, o = cfg.data, cfg.optim

    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)

    need(cfg.model in list_configs(), f"model {cfg.model!r} unknown; choose from {list_configs()}.")
    mc = model_config(cfg)
    need(
        d.tokenizer in ("byte", "bpe"),
        f"data.tokenizer must be 'byte' or 'bpe', not {d.tokenizer!r}.",
    )
    need(d.bpe_vocab >= 257, f"data.bpe_vocab must be >= 257, got {d.bpe_vocab}.")
    need(d.seq_len >= 2, f"data.seq_len must be >= 2 (next-token pairs), got {d.seq_len}.")
    need(
        d.seq_len <= mc.max_len,
        f"data.seq_len={d.seq_len} exceeds the model's max_len={mc.max_len}; lower data.seq_len "
        "or set model.max_len.",
    )
    need(d.batch_size >= 1, f"data.batch_size must be >= 1, got {d.batch_size}.")
    need(0.0 <= d.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {d.val_fraction}.")
    need(d.eval_batches >= 1, f"data.eval_batches must be >= 1, got {d.eval_batches}.")
    need(o.name in OPTIMIZERS, f"optim.name must be one of {tuple(OPTIMIZERS)}, got {o.name!r}.")
    need(o.schedule in SCHEDULES, f"optim.schedule must be one of {SCHEDULES}, got {o.schedule!r}.")
    need(o.lr > 0, f"optim.lr must be > 0, got {o.lr}.")
    need(o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}.")
    need(0.0 <= o.final_lr_fraction <= 1.0, "optim.final_lr_fraction must be in [0, 1].")
    need(o.clip_norm >= 0, f"optim.clip_norm must be >= 0 (0 = off), got {o.clip_norm}.")
    need(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}.")
    need(0 <= o.b1 < 1 and 0 <= o.b2 < 1, "optim.b1 and optim.b2 must be in [0, 1).")
    need(cfg.steps >= 1, f"steps must be >= 1, got {cfg.steps}.")
    for name in ("log_every", "eval_every", "ckpt_every"):
        need(getattr(cfg, name) >= 0, f"{name} must be >= 0 (0 = never), got {getattr(cfg, name)}.")
    need(cfg.keep >= 1, f"keep must be >= 1, got {cfg.keep}.")
    need(cfg.nan_policy in NAN_POLICIES, f"nan_policy must be one of {NAN_POLICIES}.")
    need(cfg.max_skips >= 1, f"max_skips must be >= 1, got {cfg.max_skips}.")
    need(
        len(cfg.mesh) == 2
        and all(isinstance(m, int) and m >= 0 for m in cfg.mesh)
        and cfg.mesh[1] >= 1,
        f"mesh must be (data >= 0, fsdp >= 1) ints (data 0 = all remaining devices), got {cfg.mesh}.",
    )
    need(cfg.step_sleep >= 0, "step_sleep must be >= 0.")
    need(cfg.max_minutes >= 0, f"max_minutes must be >= 0 (0 = no budget), got {cfg.max_minutes}.")
    return cfg


# Named runs. The quickstart's Hope uses chunks of 16 tokens for its memories and CMS periods of
# 32 / 64 (the default design, decisions D95 and D101, at a 128-token sequence: an eighth of it,
# then a quarter and a half), with the full meta-gradient. The registry's eta_max is used as is:
# the normalised inner steps (decisions D50, D51) keep every rate stable.
_TRAIN_REGISTRY = {
    "quickstart": TrainConfig(
        model="hope_tiny",
        model_overrides=(
            ("cms.periods", (32, 64)),
            ("selfmod.chunk", 16),
            ("titans.chunk", 16),
        ),
        steps=150,
        log_every=10,
        eval_every=50,
        ckpt_every=50,
    ),
    "shakespeare_transformer": TrainConfig(
        model="tiny", steps=2000, eval_every=250, ckpt_every=250
    ),
    "shakespeare_hope": TrainConfig(
        model="hope_tiny",
        steps=2000,
        eval_every=250,
        ckpt_every=250,
    ),
    "wikipedia_hope_small": TrainConfig(
        model="hope_small",
        data=DataConfig(corpus="wikipedia", tokenizer="bpe", seq_len=512, batch_size=16),
        optim=OptimConfig(lr=1e-3, warmup_steps=200),
        steps=20000,
        eval_every=1000,
        ckpt_every=1000,
    ),
}


def list_train_configs() -> list[str]:
    return sorted(_TRAIN_REGISTRY)


def get_train_config(name: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """A named training config with ``key=value`` overrides, validated."""
    if name not in _TRAIN_REGISTRY:
        raise ConfigError(f"unknown training config {name!r}; choose from {list_train_configs()}.")
    return validate(apply_overrides(_TRAIN_REGISTRY[name], overrides))


def dumps(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_json(), indent=2, sort_keys=True)
