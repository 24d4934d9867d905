"""`parley bench`: measure a server against a bare relay on the same machine.

`main(argv)` is the whole command (its own argparse); the CLI only forwards to it.
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    if argv[:1] == ["peers"]:
        from parley.bench.peers import main as peers

        return peers(argv[1:])
    from parley.bench.cli import main as run

    return run(argv)


__all__ = ["main"]
