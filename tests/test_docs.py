"""The documentation's code runs: every snippet of docs/concepts.md, and the docstring examples
(doctests) of the public modules."""

import doctest
import importlib
import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONCEPTS = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "concepts.md").read_text(), re.S)


def test_concepts_has_a_snippet_per_idea():
    headings = re.findall(r"^## (.+)$", (ROOT / "docs" / "concepts.md").read_text(), re.M)
    for idea in (
        "Level",
        "Frequency",
        "Associative memory",
        "Objective",
        "Update rule",
        "Knowledge transfer between levels",
        "Continuum Memory System (CMS)",
        "Self-modification",
        "Optimizers as memories",
        "Learning after deployment",
    ):
        assert idea in headings, idea
    assert len(CONCEPTS) == len(headings)


@pytest.mark.parametrize("i", range(len(CONCEPTS)))
def test_concepts_snippet_runs(i):
    """Each snippet alone, under JAX's default (user) numerics; their asserts are the checks."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        exec(compile(CONCEPTS[i], f"docs/concepts.md[{i}]", "exec"), {})


DOCTEST_MODULES = [
    "nested_jax.levels",
    "nested_jax.memory.base",
    "nested_jax.memory.rules",
    "nested_jax.optim.base",
    "nested_jax.models.config",
    "nested_jax.models.lm",
    "nested_jax.session",
]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = [t for t in finder.find(module, name) if t.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        for t in tests:
            runner.run(t)
    res = runner.summarize(verbose=False)
    assert res.failed == 0, f"{res.failed} of {res.attempted} doctest examples failed in {name}"
    assert res.attempted > 0, f"{name} has no docstring examples"


def test_site_check_finds_literal_roles_and_internal_references(tmp_path):
    """The check CI runs on the built site (.ci/check_site.py) fails on a literal role, a
    design-brief reference or an issue number, and passes a clean page."""
    import sys

    sys.path.insert(0, str(ROOT / ".ci"))
    try:
        from check_site import problems
    finally:
        sys.path.pop(0)
    (tmp_path / "ok.html").write_text("<p>See <code>LanguageModel</code> (paper §4).</p>")
    assert problems(tmp_path) == []
    (tmp_path / "bad.html").write_text("<p>:class:`~nested_jax.X` and DESIGN §4 and (issue 12)</p>")
    assert len(problems(tmp_path)) == 3


def test_decisions_index_lists_every_decision():
    text = (ROOT / "docs" / "decisions.md").read_text()
    written = re.findall(r"^\*\*(D\d+)\. ", text, re.M)
    indexed = re.findall(r"^\| (D\d+) \|", text, re.M)
    assert written and indexed == written
