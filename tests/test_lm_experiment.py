"""experiments/lm (issue 15): matched models, the needle-in-a-haystack generator, the smoke run,
resuming a cell stopped at its deadline."""

import dataclasses
import json
import shutil
import time

import numpy as np
import pytest

from experiments.lm import niah
from experiments.lm import run as lm
from experiments.lm.configs import MODELS, VARIANTS, model_spec


@pytest.mark.parametrize("corpus", ["shakespeare", "wikipedia"])
@pytest.mark.parametrize("size", ["xs", "small", "medium"])
def test_every_model_has_hopes_parameter_count_within_5_percent(size, corpus):
    counts = {m: model_spec(m, size, corpus, 256)[2] for m in MODELS}
    for m, n in counts.items():
        assert abs(n / counts["hope"] - 1) < 0.05, (m, n, counts["hope"])
    name, overrides, _ = model_spec("titans", size, corpus, 256)
    assert name == "titans_tiny" and ("titans.chunk", 16) in overrides
    # the default Hope at the grid's chunking (an eighth / a quarter / a half of 256 tokens)
    name, overrides, _ = model_spec("hope", size, corpus, 256)
    assert name == "hope_tiny" and ("cms.periods", (64, 128)) in overrides
    assert ("titans.chunk", 32) in overrides and ("selfmod.chunk", 32) in overrides
    assert model_spec("hope_paper", size, corpus, 256)[0] == "hope_paper_small"


def test_the_grids_two_sizes_are_at_least_4x_apart():
    xs, small = (model_spec("hope", s, "shakespeare", 256)[2] for s in ("xs", "small"))
    assert 0.75e6 < small < 0.9e6 and small >= 4 * xs


def test_ablations_are_hope_with_one_thing_changed():
    hope = dict(model_spec("hope", "small", "shakespeare", 256)[1])
    counts = {}
    for v in VARIANTS:
        name, overrides, counts[v] = model_spec(v, "small", "shakespeare", 256)
        changed = {k: x for k, x in overrides if hope.get(k, "unset") != x}
        assert name == "hope_tiny" and len(changed) == 1, (v, changed)
    assert changed == {"cms.periods": (64, 128, 256)}  # the last: three CMS levels
    assert counts["hope-cms_1"] < counts["hope-no_dgd"] < counts["hope-cms_3"]


def _encode(text):
    return np.frombuffer(text.encode(), np.uint8).astype(np.int32)


def _decode(tokens):
    return bytes(np.asarray(tokens, np.uint8)).decode()


@pytest.mark.parametrize("task", niah.TASKS)
def test_niah_examples_plant_needles_and_query_them(task):
    hay = "Enter the king and his train, with drums and colours. " * 400
    for depth in (0.1, 0.5, 0.9):
        e = niah.make_example(task, 2048, depth, hay, _encode, seed=3)
        assert len(e.tokens) == len(e.control) == 2048
        text, control = _decode(e.tokens), _decode(e.control)
        n_needles = 1 if task.startswith("s_niah") else 4
        assert text.count("The secret number of ") == n_needles + (task != "mv_niah") * len(e.spans)
        assert "The secret number of" not in control[: e.spans[0][0] - 60]  # no needle in control
        for s, t in e.spans:  # each answer is a planted value (and ends the query's sentence)
            answer = _decode(e.tokens[s:t])[:-1]
            for value in answer.split(", "):
                assert f" is {value}. " in text[: s - 40]
            assert _decode(e.tokens[s:t]) == _decode(e.control[s:t])  # same tail in the control
        first = text.index("The secret number of")
        if task.startswith("s_niah"):  # the one needle sits at its depth of the haystack
            assert abs(first / (2048 - (2048 - e.spans[0][0]) - 40) - depth) < 0.05
    hex_value = _decode(e.tokens[e.spans[0][0] : e.spans[0][1]])[:-1]
    assert len(hex_value) == (12 if task == "s_niah_3" else 7 if task != "mv_niah" else 34)
    if task != "s_niah_1":  # the synthetic haystack is made to measure
        with pytest.raises(ValueError, match="needs a haystack"):
            niah.make_example(task, 4096, 0.5, hay[:3000], _encode, seed=0)


def test_lm_smoke_train_context_report_and_resume(tmp_path, capsys):
    """Two models through every part at smoke size: cells train and are evaluated by position
    and on every NIAH task right away (their weights are not committed), aggregate into
    results.json and plots; finished cells are not rerun; a cell whose weights are gone says
    so instead of failing."""
    args = ["--smoke", "--models", "transformer", "titans", "--seeds", "0", "--bytes", "256"]
    lm.main(["train", *args, "--out", str(tmp_path)])
    evaluated = sorted((tmp_path / "context").glob("*/*/seed0.json"))
    assert [p.parent.name for p in evaluated] == ["titans", "transformer"]
    stamps = [p.stat().st_mtime_ns for p in evaluated]
    lm.main(["context", *args, "--out", str(tmp_path)])  # nothing left to evaluate
    assert [p.stat().st_mtime_ns for p in evaluated] == stamps
    data = json.loads((tmp_path / "results.json").read_text())
    row = data["summary"]["smoke-shakespeare-0kB"]
    assert set(row) == {"transformer", "titans"}
    assert row["transformer"]["bytes"] == row["titans"]["bytes"] == 4 * 2 * 32
    cell = next(c for c in data["cells"] if c["model"] == "transformer")
    assert cell["curve"]["step"][-1] == cell["steps"] == 4
    assert np.isfinite(cell["val_bpb"]) and cell["val_bpb"] == cell["curve"]["val_bpb"][-1]
    ctx = {r["model"]: r for r in data["context"]}
    assert set(ctx["transformer"]["by_position"]) == {
        "4x/window",
        "4x/full",
        "16x/window",
        "16x/full",
    }
    assert set(ctx["titans"]["by_position"]) == {"4x/stream", "16x/stream"}
    tasks = {x["task"] for x in ctx["titans"]["niah"]}
    assert tasks == set(niah.TASKS)
    for x in ctx["titans"]["niah"]:
        assert np.isfinite(x["gain_bits"]) and x["gain_bits"] == pytest.approx(
            x["control_bits"] - x["answer_bits"]
        )
    assert (tmp_path / "curves-smoke-shakespeare-0kB.png").stat().st_size > 10_000
    assert (tmp_path / "context-smoke-shakespeare-0kB.png").stat().st_size > 10_000
    before = (
        tmp_path / "train" / "smoke-shakespeare-0kB" / "titans" / "seed0" / "cell.json"
    ).stat()
    lm.main(["train", *args, "--out", str(tmp_path)])
    after = (tmp_path / "train" / "smoke-shakespeare-0kB" / "titans" / "seed0" / "cell.json").stat()
    assert before.st_mtime_ns == after.st_mtime_ns
    # a fresh checkout: cell.json committed, run/ (the weights) and the evaluation not
    cdir = lm.cell_dir(tmp_path, "smoke", "shakespeare", 256, "titans", 0)
    shutil.rmtree(cdir / "run")
    evaluated[0].unlink()
    capsys.readouterr()
    lm.main(["context", *args, "--out", str(tmp_path)])
    assert "retrain the cell to evaluate it" in capsys.readouterr().out
    assert not evaluated[0].exists()


def test_a_cell_stopped_at_its_deadline_resumes(tmp_path, monkeypatch):
    setup = lm.setup_for(True)
    args = ("transformer", "smoke", "shakespeare", 2048, 0, tmp_path, setup)
    # its 32 steps slowed to >= 3.2 s (step_sleep changes no value): with the program already in
    # the compile cache the cell could otherwise finish before its 1 s deadline
    slow = lambda *a, f=lm.train_config: dataclasses.replace(f(*a), step_sleep=0.1)
    monkeypatch.setattr(lm, "train_config", slow)
    assert lm.run_cell(*args, deadline=time.monotonic() + 1.0) is None
    monkeypatch.undo()
    cdir = lm.cell_dir(tmp_path, "smoke", "shakespeare", 2048, "transformer", 0)
    assert not (cdir / "cell.json").exists()
    first = json.loads((cdir / "wall.json").read_text())
    assert first["attempts"] == 1 and first["seconds"] > 0
    rec = lm.run_cell(*args)
    assert rec["steps"] == 32 and (cdir / "cell.json").exists()
    # the cell's wall-clock time is both attempts'
    assert rec["attempts"] == 2 and rec["wall_s"] > first["seconds"]


def test_a_diverged_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    """A cell whose loss turns non-finite writes its divergence step as its result (not a
    crash); the grid trains the next model; the report lists the divergence apart from the
    finished seeds' mean."""
    setup = {**lm.setup_for(True), "lr": 1e30}  # every weight ~1e30 after one step: overflow
    lm.train_grid("smoke", "shakespeare", 512, ["titans", "transformer"], [0], tmp_path, setup)
    cells = {c["model"]: c for c in lm._cells(tmp_path)}
    assert set(cells) == {"titans", "transformer"}  # the grid went on past the first
    for c in cells.values():
        assert c["val_bpb"] is None and c["diverged_at_step"] >= 2
        assert c["steps"] == c["diverged_at_step"] - 1 and "non-finite" in c["diverged"]
    row = lm.report(tmp_path)["summary"]["smoke-shakespeare-0kB"]["titans"]
    assert row["val_bpb"] is None and row["seeds"] == []
    assert row["diverged"] == {"0": cells["titans"]["diverged_at_step"]}


def test_probe_times_every_model_and_sizes_the_budget_to_the_slowest(tmp_path):
    """The probe (issue 43): each model's step timed, and the budget the largest 100 kB multiple
    that the slowest model trains within the cell's minutes (evaluations' share on top)."""
    setup = lm.setup_for(True)
    # a 60-minute cell: the budget stays above zero on a loaded machine (with 5 minutes it was 0
    # with the smoke Hope at about 270 tokens/s, both cores busy)
    got = lm.probe("smoke", "shakespeare", ["transformer", "hope"], tmp_path, setup, 60.0, 2)
    saved = json.loads((tmp_path / "probe-smoke-shakespeare.json").read_text())
    assert saved["budget_bytes"] == got["budget_bytes"]
    rows = {r["model"]: r for r in saved["results"]}
    assert set(rows) == {"transformer", "hope"}
    assert all(r["tokens_per_s"] > 0 and r["compile_s"] > 0 for r in rows.values())
    slowest = min(r["tokens_per_s"] for r in rows.values())
    fits = slowest * 3600 / (1 + lm.EVAL_SHARE)  # bytes the slowest trains in an hour
    assert fits - 100_000 < saved["budget_bytes"] <= fits and saved["budget_bytes"] > 0
    assert max(r["cell_minutes_at_budget"] for r in rows.values()) <= 60.0


def test_at_equal_time_compares_models_when_the_fastest_finished():
    """Who is ahead at equal compute: every model's last evaluation within the training time of
    the model that finished first (in every seed); a seed not yet evaluated then is left out,
    a diverged cell is not counted."""

    def cell(seconds, bpb, seed=0, diverged=None):
        c = {"train_seconds": seconds, "val_bpb": bpb}
        return {"seed": seed, "curve": c, "diverged_at_step": diverged}

    by_model = {
        "transformer": [cell([10, 20], [3.0, 2.8]), cell([12, 22], [3.1, 2.9], seed=1)],
        "hope": [cell([15, 30, 60], [3.2, 2.7, 2.5]), cell([25, 70], [2.9, 2.4], seed=1)],
        "titans": [cell([5], [9.0], diverged=3)],
    }
    got = lm.at_equal_time(by_model)
    assert got["first_to_finish"] == "transformer" and got["seconds"] == 22.0
    assert got["val_bpb"]["transformer"]["mean"] == pytest.approx(2.85)
    # hope: seed 0's evaluation at 15 s (not the one at 30 s); seed 1 had none by 22 s
    assert got["val_bpb"]["hope"] == {"mean": 3.2, "std": 0.0, "n": 1}
    assert "titans" not in got["val_bpb"]
    assert lm.at_equal_time({"hope": [cell([5], [9.0], diverged=3)]}) is None


def test_paired_differences_are_taken_at_the_same_seed():
    """A model's difference to Transformer++ is taken seed by seed (the same data order), over
    the seeds both finished."""
    cells = [{"seed": s, "val_bpb": v, "diverged_at_step": None} for s, v in ((0, 2.6), (1, 2.5))]
    base = [
        {"seed": 0, "val_bpb": 2.7, "diverged_at_step": None},
        {"seed": 1, "val_bpb": None, "diverged_at_step": 9},
        {"seed": 2, "val_bpb": 2.0, "diverged_at_step": None},
    ]
    assert lm._paired(cells, base) == pytest.approx([-0.1])
