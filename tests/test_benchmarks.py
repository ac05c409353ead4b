"""The benchmark harness writes the JSON it promises (structure only; no timing is asserted)."""

import json

import jax
import numpy as np
import pytest

from benchmarks import harness, run


def test_quick_benchmark_writes_json(tmp_path):
    out = tmp_path / "mc.json"
    run.main(["memory_chunked", "--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["benchmark"] == "memory_chunked"
    assert {"platform", "cpu_count", "jax"} <= set(data["machine"])
    rows = data["results"]
    assert {(r["memory"], r["mode"]) for r in rows} == {
        (m, mode)
        for m in ("linear_delta", "linear_delta_exact", "mlp")
        for mode in ("fwd", "fwd_bwd")
    }
    for r in rows:
        assert len(r["chunked"]["runs_s"]) >= 5 and r["chunked"]["compile_s"] > 0
        assert r["chunked"]["memory"]["temp"] > 0  # XLA's memory analysis is available on CPU
        assert r["speedup"] == pytest.approx(r["token_scan"]["median_s"] / r["chunked"]["median_s"])


def test_harness_rejects_too_few_repeats():
    with pytest.raises(ValueError, match="repeats must be >= 5"):
        harness.time_jitted(lambda x: x, (1.0,), repeats=2)


def test_interleaved_timing_runs_every_case_every_round_in_alternating_order():
    """`time_interleaved` compiles every case, then times each ``repeats`` times per round, the
    order reversed every other round; the median is over every run."""
    calls = []

    def case(name):
        def fn(x):
            jax.debug.callback(lambda: calls.append(name))
            return x + 1.0

        return fn, (1.0,)

    timed = harness.time_interleaved({"a": case("a"), "b": case("b")}, repeats=5, rounds=2)
    runs = calls[2:]  # after each case's compile-time warm-up call
    assert calls[:2] == ["a", "b"]
    assert runs == ["a"] * 5 + ["b"] * 5 + ["b"] * 5 + ["a"] * 5
    for t in timed.values():
        assert len(t["runs_s"]) == 10 and t["median_s"] == pytest.approx(np.median(t["runs_s"]))
        assert t["compile_s"] > 0
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        harness.time_interleaved({"a": case("a")}, rounds=0)
    with pytest.raises(SystemExit, match="--rounds applies to model_throughput only"):
        run.main(["launches", "--quick", "--rounds", "2"])


def test_quick_optim_benchmark_writes_json(tmp_path):
    out = tmp_path / "os.json"
    run.main(["optim_step", "--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    names = {r["optimizer"] for r in data["results"]}
    assert {"adamw", "muon", "m3", "dmgd_hidden_2x", "dmgd_hidden_8"} <= names
    adamw = next(r for r in data["results"] if r["optimizer"] == "adamw")
    assert adamw["vs_adamw"] == pytest.approx(1.0)


def test_quick_model_throughput_writes_json(tmp_path):
    from benchmarks import model_throughput, table

    data = model_throughput.run(
        quick=True,
        models=("transformer", "transformer_pm", "titans"),
        seqs=(32,),
        batch=2,
        rounds=2,
    )
    out = harness.write_json(tmp_path / "mt.json", data)
    data = json.loads(out.read_text())
    models = {r["model"] for r in data["results"]}
    speeds = {"titans/transformer speed", "titans/transformer_pm speed"}
    assert {"transformer", "transformer_pm", "titans"} | speeds == models
    assert all(r["ratio"] > 0 for r in data["results"] if "ratio" in r)
    firsts = [r for r in data["results"] if r.get("seq") == 32 and "params" in r]
    assert all(r["cost_per_token_vs_shortest"] == pytest.approx(1.0) for r in firsts)
    for r in (r for r in data["results"] if "params" in r):  # batch 2: tokens of both sequences
        assert r["batch"] == 2 and len(r["runs_s"]) == 2 * 5  # two interleaved rounds
        assert r["tokens_per_s"] == pytest.approx(2 * r["seq"] / r["median_s"])
    for r in (r for r in data["results"] if "params" in r):  # matmul work is counted and > 0
        assert r["matmul_gflop_per_step"] > 0
        assert r["matmul_gflop_per_s"] == pytest.approx(r["matmul_gflop_per_step"] / r["median_s"])
    text = table.model_throughput_table(data)
    assert "titans speed / Transformer++ speed" in text and "batch 2" in text
    assert "titans speed / Transformer++ (params matched) speed" in text


def test_parameter_matched_transformer_has_hopes_parameter_count():
    from benchmarks import model_throughput
    from nested_jax.models import count_params

    cfg = model_throughput.FULL
    hope = count_params(model_throughput.model_config("hope", 512, cfg))
    pm = model_throughput.model_config("transformer_pm", 512, cfg)
    plain = model_throughput.model_config("transformer", 512, cfg)
    assert pm.d_ff > plain.d_ff
    # one more MLP unit changes the count by 3 * d_model * n_layers: the nearest is within half
    assert abs(count_params(pm) - hope) <= 3 * cfg["d_model"] * cfg["n_layers"] / 2


def test_matmul_flops_counts_loop_bodies_times_their_trip_counts():
    import jax
    import jax.numpy as jnp

    from benchmarks.flops import matmul_flops

    a, b = jnp.ones((3, 5, 7)), jnp.ones((7, 11))
    assert matmul_flops(lambda a, b: a @ b, a, b) == 2 * 3 * 5 * 7 * 11
    scan = lambda a, b: jax.lax.scan(lambda c, x: (c + (x @ b).sum(), None), 0.0, a)[0]
    assert matmul_flops(scan, a, b) == 3 * (2 * 5 * 7 * 11)  # XLA's cost analysis: 1x
    nested = lambda a, b: jax.lax.scan(lambda c, x: (c + scan(a, b), None), 0.0, a)[0]
    assert matmul_flops(nested, a, b) == 9 * (2 * 5 * 7 * 11)
    batched = lambda x, w: jnp.einsum("gtd,gde->gte", x, w)
    assert matmul_flops(batched, jnp.ones((2, 4, 8)), jnp.ones((2, 8, 16))) == 2 * 2 * 4 * 8 * 16


def test_benchmark_variants_are_the_defaults_and_the_reference():
    """``hope`` / ``selfmod`` measure the registry's default design at the benchmark shape,
    ``*_paper`` the faithful reference (the benchmarks' Hope before decisions D95), and the
    larger-chunk variants keep the teach signal's constraints."""
    from benchmarks import model_throughput as mt

    full = mt.FULL
    hope = mt.model_config("hope", 512, full)
    assert (hope.titans.chunk, hope.selfmod.chunk, hope.cms.periods) == (64, 64, (128, 256))
    assert mt.model_config("hope_cms64", 512, full) == hope.replace(cms={"periods": (64, 256)})
    assert (hope.selfmod.gates, hope.cms.teach_path) == ("linear", "residual")
    paper = mt.model_config("hope_paper", 512, full)
    assert (paper.titans.chunk, paper.selfmod.chunk, paper.cms.periods) == (16, 8, (16, 64))
    assert (paper.selfmod.gates, paper.cms.teach_path) == ("memory", "network")
    cfg = mt.model_config("hope_paper_c64", 512, full)
    assert (cfg.titans.chunk, cfg.selfmod.chunk, cfg.cms.periods) == (64, 16, (64, 256))
    assert cfg.cms.signal == "teach"
    assert mt.model_config("hope_paper_ntp", 512, full).cms.signal == "ntp"
    sm = mt.model_config("selfmod_paper_c64", 512, full)
    assert (sm.titans.chunk, sm.selfmod.chunk) == (64, 16)
    assert mt.model_config("selfmod", 512, full).selfmod.chunk == 64
    frozen = mt.model_config("hope_cms_frozen", 512, full)
    assert frozen.cms.periods == (0, 0) and frozen.replace(cms={"periods": (128, 256)}) == hope
    assert (hope.cms.signal, hope.cms.learn_lr) == ("online", False)
    teach = mt.model_config("hope_teach", 512, full)
    assert teach == hope.replace(cms={"signal": "teach", "learn_lr": True})
    assert mt.model_config("hope_online_lr", 512, full) == hope.replace(cms={"learn_lr": True})
    for n in (32, 128):
        assert mt.model_config(f"hope_c{n}", 512, full) == hope.replace(
            titans={"chunk": n}, selfmod={"chunk": n}
        )
    res = mt.model_config("hope_attention_residual", 512, full)
    assert res.cms.teach_path == "residual"
    assert res.replace(cms={"teach_path": "network"}) == mt.model_config(
        "hope_attention_paper", 512, full
    )
    ha = mt.model_config("hope_attention", 512, full)
    assert ha.cms == hope.cms  # Hope-Attention's default takes the default Hope's CMS (D99)
    ha_frozen = mt.model_config("hope_attention_cms_frozen", 512, full)
    assert ha_frozen.cms.periods == (0, 0) and ha_frozen.replace(cms={"periods": (128, 256)}) == ha
    ha128 = mt.model_config("hope_attention_c128", 512, full)  # D100's trial of the default's CMS
    assert ha128 == ha
    ha64 = mt.model_config("hope_attention_cms64", 512, full)
    assert ha64 == ha.replace(cms={"periods": (64, 256)})


def test_quick_selfmod_chunked_writes_json(tmp_path):
    out = tmp_path / "sm.json"
    run.main(["selfmod_chunked", "--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    forms = {r["form"] for r in data["results"]}
    assert forms == {"chunked", "reference", "speedup"}
    assert all(r["ratio"] > 0 for r in data["results"] if r["form"] == "speedup")


def test_tables_render_every_stored_result(capsys):
    """Every committed result file prints as a markdown table with the machine named."""
    import pathlib

    from benchmarks import table

    root = pathlib.Path(__file__).resolve().parents[1]
    results = sorted((root / "benchmarks" / "results").glob("*.json"))
    assert results, "no committed benchmark results"
    for path in results:
        table.main([str(path)])
        out = capsys.readouterr().out
        assert out.startswith("Machine: ") and "|---|" in out


def test_quick_export_check_writes_json_and_its_table(tmp_path, capsys):
    from benchmarks import table

    out = tmp_path / "ex.json"
    run.main(["export_check", "--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    rows = [(r["model"], r["compute_dtype"]) for r in data["results"]]
    assert rows == [(m, d) for m in ("tiny", "hope_tiny") for d in ("float32", "bfloat16")]
    assert all(r["train_stablehlo_kb"] > r["stream_stablehlo_kb"] > 0 for r in data["results"])
    assert all(r["train_bf16_dots"] > 0 for r in data["results"] if r["compute_dtype"] != "float32")
    table.main([str(out)])
    assert "| hope_tiny | bfloat16 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="export_check takes --models only"):
        run.main(["export_check", "--quick", "--seqs", "32"])


def test_quick_flop_split_writes_json(tmp_path):
    out = tmp_path / "fs.json"
    run.main(["flop_split", "--quick", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    by = {(r["model"], json.dumps(r["overrides"])): r for r in rows}
    assert len(by) == len(rows) == 10
    for r in rows:  # a backward adds work to its forward
        assert r["forward_backward_gflop"] > r["forward_gflop"] > 0
    selfmod, fo = by[("selfmod_paper", "{}")], by[("selfmod_paper", '{"first_order": true}')]
    assert (
        fo["forward_gflop"] == selfmod["forward_gflop"]
    )  # first order: same values, less backward
    assert fo["forward_backward_gflop"] < selfmod["forward_backward_gflop"]


def test_quick_session_absorb_writes_json(tmp_path):
    out = tmp_path / "sa.json"
    run.main(["session_absorb", "--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert {r["model"] for r in data["results"]} == {"tiny", "titans_tiny"}
    for r in data["results"]:
        assert (
            r["speedup"] > 0 and r["parallel"]["tokens_per_s"] > 0 and r["token"]["compile_s"] > 0
        )


def test_quick_config_costs_writes_json_and_its_table(tmp_path, capsys):
    out = tmp_path / "cc.json"
    run.main(["config_costs", "--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    (r,) = data["results"]
    assert r["config"] == "shakespeare_transformer" and r["kind"] == "transformer"
    assert r["tokens_per_step"] == 32 and r["timed_runs"] == 5
    assert r["compile_s"] > 0 and r["median_s"] > 0 and r["params"] > 0
    from benchmarks import table

    table.main([str(out)])
    assert "`shakespeare_transformer`" in capsys.readouterr().out


def test_quick_ab_compares_two_checkouts(tmp_path, capsys):
    """The A/B runs model_throughput from both checkouts (here the same one twice), alternating,
    and writes both sides' speed and FLOPs with the ratio; its table renders."""
    import json
    import pathlib

    from benchmarks import ab, table

    root = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / "ab.json"
    ab.main(["--base", str(root), "--models", "transformer", "--seqs", "32", "--quick",
             "--out", str(out)])  # fmt: skip
    data = json.loads(out.read_text())
    (row,) = data["results"]
    assert row["model"] == "transformer" and len(row["base_tokens_per_s_runs"]) == 2
    assert row["base_matmul_gflop"] == row["this_matmul_gflop"] > 0
    assert row["speed_this_over_base"] > 0
    table.main([str(out)])
    assert "this / base" in capsys.readouterr().out


def test_op_counts_are_loop_bodies_times_their_trip_counts():
    """`jaxpr_counts`: every primitive once per execution, scans times their length, a cond by
    its costliest branch, a while loop of unknown trip count once (and reported)."""
    import jax
    import jax.numpy as jnp

    from benchmarks.flops import count_ops

    a, b = jnp.ones((3, 5, 7)), jnp.ones((7, 11))
    one = count_ops(lambda a, b: a @ b, a, b)
    assert one["matmuls"] == 1 and one["ops"] >= 1 and one["unknown_loops"] == 0
    body = lambda c, x: (c + jnp.sum(x @ b @ b.T), None)
    scan = count_ops(lambda a: jax.lax.scan(body, 0.0, a)[0], a)
    assert scan["matmuls"] == 3 * 2 and scan["ops"] >= 3 * 3
    cond = count_ops(
        lambda p, a: jax.lax.cond(p, lambda: (a @ b @ b.T).sum(), lambda: 0.0), True, a
    )
    assert cond["matmuls"] == 2
    loop = count_ops(lambda n: jax.lax.while_loop(lambda i: i < n, lambda i: i + 1, 0), 4)
    assert loop["unknown_loops"] == 1


def test_quick_launches_writes_json_and_its_table(tmp_path, capsys):
    import json

    from benchmarks import run, table

    out = tmp_path / "launches.json"
    run.main(["launches", "--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    rows = {r["model"]: r for r in data["results"]}
    assert rows["transformer_pm"]["matmuls"] < rows["hope"]["matmuls"]  # the sequential loops
    assert all(r["ops"] >= r["matmuls"] > 0 for r in rows.values())
    table.main([str(out)])
    assert "matmuls" in capsys.readouterr().out


def test_accelerator_script_runs_quick_on_the_cpu_and_records_the_device(tmp_path):
    """benchmarks/accelerator.sh --quick, in bfloat16 (what a device session runs, at tiny sizes): JSON with
    the device's kind beside every case, the counts beside the speed; a failing case is recorded
    and the others go on (an unknown model here)."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    args = ["--quick", "--models", "transformer_pm", "nonexistent", "--seqs", "32"]
    args += ["--compute-dtype", "bfloat16"]  # mixed precision (D105), as a device session runs it
    r = subprocess.run(
        ["bash", str(root / "benchmarks" / "accelerator.sh"), *args],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((tmp_path / "accelerator_quick_bf16.json").read_text())
    ok, bad = data["results"]
    assert data["config"]["compute_dtype"] == ok["compute_dtype"] == "bfloat16"
    assert data["machine"]["device_kind"] and ok["device"] == data["machine"]["device_kind"]
    assert ok["tokens_per_s"] > 0 and ok["matmuls"] > 0 and ok["batch"] == 8
    assert bad["model"] == "nonexistent" and "error" in bad


def test_quick_compile_time_writes_json_and_its_table(tmp_path):
    """Each case's trace + lower and compile seconds and its program size, positive, and the
    table renders them."""
    from benchmarks import table

    out = tmp_path / "ct.json"
    run.main(["compile_time", "--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["results"]] == ["tiny", "hope_tiny"]
    for r in data["results"]:
        assert r["compile_s"] > 0 and r["trace_lower_s"] > 0 and r["stablehlo_kb"] > 0
        assert r["total_s"] >= r["compile_s"]
    assert "hope_tiny (1 layers)" in table.TABLES["compile time"](data)


def test_quick_sharding_plan_follows_the_training_sharding_rule(tmp_path):
    """Per device: the leaves the rule shards, divided by fsdp, plus the replicated ones."""
    from benchmarks import run

    out = tmp_path / "plan.json"
    run.main(["sharding_plan", "--quick", "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [(r["mesh"]["data"], r["mesh"]["fsdp"]) for r in rows] == [(1, 8)]  # one layout at 8
    r = rows[0]
    whole, rep = r["unsharded_train_state_gib"], r["replicated_gib_per_device"]
    assert 0 <= rep < whole
    assert abs(r["train_state_gib_per_device"] - ((whole - rep) / 8 + rep)) < 1e-12
    assert r["fast_state_gib_per_sequence"] > sum(r["fast_state_layers_gib_per_sequence"].values())
