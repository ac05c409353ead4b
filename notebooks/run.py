"""Execute the notebooks top to bottom: ``python -m notebooks.run [names] [--size smoke] [--write]``.

Every notebook has one cell tagged ``parameters`` (``SIZE = "default"``, papermill's convention);
this runner inserts a cell after it that sets the given size (``"smoke"``: seconds, what the test
suite runs so that no notebook rots; ``"default"``: a few minutes on 2 CPU cores, the outputs kept
in the files). ``--write`` saves the executed notebook in place (outputs included), so the
notebooks read on the web with the figures of their last default run.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
SIZES = ("smoke", "default")


def notebooks() -> list[pathlib.Path]:
    """The notebooks, in reading order (their names start with a number)."""
    return sorted(HERE.glob("[0-9]*.ipynb"))


def execute(path: pathlib.Path | str, size: str = "default", timeout: int = 900, **params):
    """Run one notebook in a fresh kernel with ``SIZE = size`` (and any other ``params``, e.g.
    ``RUN_DIR``, set after the ``parameters`` cell): the executed ``NotebookNode``.

    Raises ``nbclient.exceptions.CellExecutionError`` (with the failing cell and its traceback)
    when a cell fails, ``ValueError`` for an unknown size or a notebook without a ``parameters``
    cell."""
    import nbformat
    from nbclient import NotebookClient

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}.")
    path = pathlib.Path(path)
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(
            f"{path.name}: expected one cell tagged 'parameters', found {len(tagged)}."
        )
    if size != "default":
        params = {"SIZE": size, **params}
    if params:
        lines = [f"{k} = {v!r}" for k, v in params.items()]
        cell = nbformat.v4.new_code_cell("\n".join(lines) + "  # injected by notebooks/run.py")
        cell.metadata["tags"] = ["injected-parameters"]
        nb.cells.insert(tagged[0] + 1, cell)
    for c in nb.cells:  # ids required by nbformat >= 4.5
        c.setdefault("id", nbformat.v4.new_code_cell().id)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
    )
    client.execute()
    return nb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="notebook names or numbers (default: all)")
    ap.add_argument("--size", choices=SIZES, default="default")
    ap.add_argument("--write", action="store_true", help="save the outputs into the notebook")
    args = ap.parse_args(argv)
    chosen = [
        p for p in notebooks() if not args.names or any(p.name.startswith(n) for n in args.names)
    ]
    if not chosen:
        print(f"no notebook matches {args.names}; have {[p.name for p in notebooks()]}")
        return 2
    import nbformat

    for p in chosen:
        t = time.perf_counter()
        nb = execute(p, args.size)
        print(f"{p.name}: ran at size {args.size!r} in {time.perf_counter() - t:.0f} s")
        if args.write:
            if args.size != "default":
                print("  not written: only default-size outputs are kept in the notebooks")
            else:
                nbformat.write(nb, p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
