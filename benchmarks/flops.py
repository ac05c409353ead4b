"""Matmul FLOPs of a jitted function, counted on its jaxpr with loop bodies times their trip counts.

XLA's ``cost_analysis`` counts a ``while`` body once, so for models that run ``lax.scan`` over chunks
it undercounts by the number of chunks. Here every ``dot_general`` costs ``2 * batch * m * n * k``
FLOPs; a ``scan`` body counts ``length`` times; ``cond`` counts its costliest branch; every other
primitive with sub-jaxprs (``jit``, ``checkpoint``, ``custom_vjp`` / ``custom_jvp`` calls) counts
once. What is counted is what the traced program asks for (the gradient's jaxpr includes the
backward and the rematerialised forward); XLA may still remove dead or duplicate work.

``while`` loops of unknown trip count raise: none of the benchmarked models has one.

:func:`jaxpr_counts` counts, the same way, what a step *executes* as separate operations: every
primitive equation (``ops``) and every ``dot_general`` (``matmuls``), loop bodies times their trip
counts. On a GPU each is about one kernel launch unless XLA fuses it (elementwise chains fuse;
matmuls in a sequential loop do not), so these counts are the accelerator proxy that FLOPs are
not: a step of many small sequential matmuls is launch-bound whatever the card. A ``while`` loop
of unknown trip count is counted once and reported (``unknown_loops``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
from jax.extend import core as jcore

__all__ = ["count_ops", "jaxpr_counts", "jaxpr_matmul_flops", "matmul_flops"]


def _dot_flops(eqn) -> int:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    free = lambda shape, *used: math.prod(
        s for i, s in enumerate(shape) if i not in (*used[0], *used[1])
    )
    batch = math.prod(lhs[d] for d in lb)
    contract = math.prod(lhs[d] for d in lc)
    return 2 * batch * free(lhs, lc, lb) * free(rhs, rc, rb) * contract


def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        for x in v if isinstance(v, tuple | list) else (v,):
            if isinstance(x, jcore.ClosedJaxpr):
                yield x.jaxpr
            elif isinstance(x, jcore.Jaxpr):
                yield x


def jaxpr_matmul_flops(jaxpr) -> int:
    """Matmul FLOPs of a (closed) jaxpr, loops times their trip counts."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_matmul_flops(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(jaxpr_matmul_flops(b) for b in eqn.params["branches"])
        elif name == "while":
            if jaxpr_matmul_flops(eqn.params["body_jaxpr"]):
                raise ValueError("a while loop with matmuls and an unknown trip count.")
        else:
            total += sum(jaxpr_matmul_flops(j) for j in _sub_jaxprs(eqn))
    return total


def matmul_flops(fn: Callable, *args) -> int:
    """Matmul FLOPs of one call ``fn(*args)`` (see the module docstring)."""
    return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args))


_ZERO = {"matmul_flops": 0, "matmuls": 0, "ops": 0, "unknown_loops": 0}


def _add(a: dict, b: dict, times: int = 1) -> dict:
    return {k: a[k] + times * b[k] for k in a}


def jaxpr_counts(jaxpr) -> dict:
    """``{"matmul_flops", "matmuls", "ops", "unknown_loops"}`` of a (closed) jaxpr, every loop
    body times its trip count (``cond``: its costliest branch by ops)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = dict(_ZERO)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "scan":
            total = _add(total, jaxpr_counts(eqn.params["jaxpr"]), eqn.params["length"])
        elif name == "cond":
            branches = [jaxpr_counts(b) for b in eqn.params["branches"]]
            total = _add(total, max(branches, key=lambda c: (c["ops"], c["matmul_flops"])))
        elif name == "while":
            body = jaxpr_counts(eqn.params["body_jaxpr"])
            cond = jaxpr_counts(eqn.params["cond_jaxpr"])
            total = _add(_add(total, body), cond)
            total["unknown_loops"] += 1
        else:
            subs = list(_sub_jaxprs(eqn))
            if subs:
                for j in subs:
                    total = _add(total, jaxpr_counts(j))
            else:
                total["ops"] += 1
                if name == "dot_general":
                    total["matmuls"] += 1
                    total["matmul_flops"] += _dot_flops(eqn)
    return total


def count_ops(fn: Callable, *args) -> dict:
    """`jaxpr_counts` of one call ``fn(*args)`` (traced only: nothing runs or compiles)."""
    return jaxpr_counts(jax.make_jaxpr(fn)(*args))
