"""Knowledge transfer between levels and Neural Learning Modules (paper §2.3-§2.4, §3.1, §3.5).

Where the five transfer mechanisms are:
  module.py          LearningModule (parameters + memory + update rule, one pytree) and run_nest
                     (members with periods on nested_jax.run_levels); direct parametric transfer
                     (a member writes the residual its neighbours leave, or reads their output)
  initialization.py  by initialization: the slow level meta-learns the fast level's initial state
                     (MAML; second order or first order)
  generation.py      by generation: a hypernetwork generates the fast level's weights; a learned
                     optimizer generates its updates from its gradients (it is an optimizer:
                     nested_jax/optim/learned.py, re-exported here)
  backprop.py        by backpropagation: local surprise signals dL/dy per layer (backprop as a
                     self-referential memory of input -> surprise) and Generalized Gradient
                     Descent with a self-generated target (GD and DGD as special cases)
Direct non-parametric transfer (through the context) is attention:
nested_jax.memory.SoftmaxMemory.
"""

from nested_jax.optim.learned import (  # an optimizer: it lives in optim/
    init_learned_rule,
    learned_optimizer,
    meta_train_learned_optimizer,
)
from nested_jax.transfer.backprop import (
    dot_objective,
    ggd_step,
    l2_objective,
    lss_target,
    surprise_signals,
)
from nested_jax.transfer.generation import hypernet_init, hypernet_module, hypernet_weights
from nested_jax.transfer.initialization import adapt, meta_learn_init, post_adaptation_loss
from nested_jax.transfer.module import LearningModule, NestResult, run_nest

__all__ = [
    "LearningModule",
    "NestResult",
    "adapt",
    "dot_objective",
    "ggd_step",
    "hypernet_init",
    "hypernet_module",
    "hypernet_weights",
    "init_learned_rule",
    "l2_objective",
    "learned_optimizer",
    "lss_target",
    "meta_learn_init",
    "meta_train_learned_optimizer",
    "post_adaptation_loss",
    "run_nest",
    "surprise_signals",
]
