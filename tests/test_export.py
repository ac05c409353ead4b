"""Every registry model's training step and streaming step export for GPU and TPU from this CPU
(issue 42 item 3; `benchmarks.export_check`): no operation without a lowering there, no custom
call outside the ones every accelerator provides."""

import jax
import jax.numpy as jnp
import pytest
from jax import export

from benchmarks import export_check
from nested_jax.models import list_configs


@pytest.mark.parametrize("name", list_configs())
def test_registry_model_exports_for_gpu_and_tpu(name):
    row = export_check.check(name)
    assert row["platforms"] == ["cuda", "tpu"]
    assert row["train_stablehlo_kb"] > 0 and row["stream_stablehlo_kb"] > 0
    assert row["tokens"] >= 2


def test_a_cpu_only_custom_call_is_found():
    """The check reads custom calls off the exported text: a CPU program's LAPACK call is one
    (so a model calling it would fail `check`)."""
    exported = export.export(jax.jit(jnp.linalg.cholesky), platforms=("cpu",))(
        jax.ShapeDtypeStruct((4, 4), "float32")
    )
    calls = export_check.custom_calls(exported.mlir_module())
    assert calls and not calls <= export_check.ALLOWED
    assert any("potrf" in c for c in calls)
