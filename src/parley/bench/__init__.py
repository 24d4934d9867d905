"""`parley bench`: measure a server against a bare relay on the same machine.

`main(argv)` is the whole command (its own argparse); the CLI only forwards to it.
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from parley.bench.cli import main as run

    return run(argv)


__all__ = ["main"]
