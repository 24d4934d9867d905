"""`parley`: serve, and a command-line client for demos and scripts."""

from __future__ import annotations

import argparse
import sys

from parley.server.config import add_serve_arguments, config_from_args


def _serve(args: argparse.Namespace) -> int:
    from parley.server.app import serve

    serve(config_from_args(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run a Parley node (embedded SQLite by default)")
    add_serve_arguments(serve_p)
    serve_p.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
