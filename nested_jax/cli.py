"""Command-line entry point: ``nested-jax COMMAND [options]``."""

from __future__ import annotations

import sys

COMMANDS = {
    "quickstart": "a two-level associative memory learning a drifting map in context (CPU, seconds)",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: nested-jax COMMAND [options]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:<12} {text}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "quickstart":
        from nested_jax import quickstart

        quickstart.main(rest)
        return 0
    print(
        f"nested-jax: unknown command {cmd!r}; choose one of: {', '.join(COMMANDS)}",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
