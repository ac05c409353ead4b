"""Every registry model's training step and streaming step export for GPU and TPU from this CPU
(issue 42 item 3; `benchmarks.export_check`): no operation without a lowering there, no custom
call outside the ones every accelerator provides."""

import jax
import jax.numpy as jnp
import pytest
from jax import export

from benchmarks import export_check
from nested_jax.models import list_configs


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list_configs())
def test_registry_model_exports_for_gpu_and_tpu(name, compute_dtype):
    row = export_check.check(name, compute_dtype=compute_dtype)
    assert row["platforms"] == ["cuda", "tpu"]
    assert row["train_stablehlo_kb"] > 0 and row["stream_stablehlo_kb"] > 0
    assert row["tokens"] >= 2
    if compute_dtype == "bfloat16":  # the policy reached both programs
        assert row["train_bf16_dots"] > 0 and row["stream_bf16_dots"] > 0


def test_bf16_dots_are_counted_only_with_bfloat16_operands():
    def text(dtype):
        f = lambda a, b: jnp.matmul(
            a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32
        )
        x = jax.ShapeDtypeStruct((4, 4), "float32")
        return export.export(jax.jit(f), platforms=("cuda",))(x, x).mlir_module()

    assert export_check.bf16_dots(text(jnp.bfloat16)) == 1
    assert export_check.bf16_dots(text(jnp.float32)) == 0


def test_a_cpu_only_custom_call_is_found():
    """The check reads custom calls off the exported text: a CPU program's LAPACK call is one
    (so a model calling it would fail `check`)."""
    exported = export.export(jax.jit(jnp.linalg.cholesky), platforms=("cpu",))(
        jax.ShapeDtypeStruct((4, 4), "float32")
    )
    calls = export_check.custom_calls(exported.mlir_module())
    assert calls and not calls <= export_check.ALLOWED
    assert any("potrf" in c for c in calls)
