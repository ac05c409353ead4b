"""Fail on what should never reach the built documentation site: Sphinx roles rendered literally
(``:class:`X```: mkdocstrings does not read them) and references to documents users do not have
(the design brief; issue numbers outside the decisions record, which is organised by issue), and
docstring examples collapsed into quote blocks (doctests belong in an ``Examples:`` section). Run
after ``mkdocs build``: ``python .ci/check_site.py``."""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

BAD = {
    "a literal Sphinx role": re.compile(r":(class|func|meth|mod|attr|data|obj|exc):`"),
    "a reference to the design brief": re.compile(r"\bDESIGN §"),
    "an issue number": re.compile(r"\(issue \d+\)"),
}


# a doctest outside an ``Examples:`` section renders as nested quote blocks, its lines run together
COLLAPSED = re.compile(
    r"<blockquote>\s*<blockquote>\s*<blockquote>\s*<p>import|<blockquote>\s*<blockquote>"
)


def problems(site: Path) -> list[str]:
    """``"page: what (excerpt)"`` for every bad pattern in the HTML pages under ``site``."""
    out = []
    for page in sorted(site.rglob("*.html")):
        raw = page.read_text(encoding="utf-8")
        if COLLAPSED.search(raw):
            out.append(f"{page.relative_to(site)}: a docstring example collapsed into a quote")
        text = html.unescape(re.sub(r"<[^>]+>", "", raw))
        history = page.relative_to(site).parts[0] == "decisions"
        for what, pat in BAD.items():
            if history and what == "an issue number":
                continue
            for m in pat.finditer(text):
                excerpt = text[max(0, m.start() - 30) : m.end() + 30].replace("\n", " ")
                out.append(f"{page.relative_to(site)}: {what} ({excerpt!r})")
    return out


def main(argv: list[str]) -> int:
    site = Path(argv[0] if argv else "build/docs")
    if not site.is_dir():
        print(f"{site} is not a built site; run `mkdocs build` first.", file=sys.stderr)
        return 2
    found = problems(site)
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
