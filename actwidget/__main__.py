"""`python -m actwidget`: the headless demo and the stop command.

```sh
python -m actwidget [demo] [--epochs N] [--lr LR] [--init kaiming] ...   # the headless demo
python -m actwidget stop DIR                                             # stop the run in DIR
```
Bad input gets one line on stderr (exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Sequence

from ._cli import OneLineParser

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The command line: `demo` (the default) and `stop`."""
    from . import demo

    top = OneLineParser(
        prog="python -m actwidget",
        description="actwidget's command line. With no command, runs the demo.",
        epilog="examples:\n"
        "  python -m actwidget                          the demo: lr 0.6, alerts on purpose\n"
        "  python -m actwidget --lr 0.2 --init kaiming  the demo's fix: no alert\n"
        "  python -m actwidget demo --help              the demo's options\n"
        "  python -m actwidget stop runs/a              stop the run writing runs/a",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(dest="command", metavar="{demo,stop}", parser_class=OneLineParser)
    demo.add_arguments(
        commands.add_parser(
            "demo",
            help="train the reference CNN on Fashion-MNIST in the terminal, print its alerts "
            "and a verdict, save the static plots (the default command)",
            description=demo.DESCRIPTION,
        )
    )
    stop = commands.add_parser(
        "stop",
        help="ask the training run that writes a run directory to stop",
        description="Ask the training run that writes this run directory (run_dir=...) to "
        "stop at its next check (within about half a second plus a batch).",
    )
    stop.add_argument("dir", metavar="DIR", help="the run directory (run_dir=... of the run)")
    return top


def stop(path: str, prog: str = "python -m actwidget stop") -> int:
    """Write a stop request into the run directory `path`: 0 if a fit runs there, 1 if
    none does, 2 if `path` is no readable run directory (one line on stderr)."""
    from .runfile import RunFollower, request_stop
    from .stats import StatsFileError

    try:
        asked = request_stop(path)
        status = RunFollower(path).status
    except sqlite3.Error as e:  # a damaged run.sqlite
        print(f"{prog}: error: {path}: run.sqlite is not a readable run database ({e})",
              file=sys.stderr)  # fmt: skip
        return 2
    except (StatsFileError, OSError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if not asked:
        print(f"nothing runs in {path} (it is {status.state.value})", file=sys.stderr)
        return 1
    print(f"stop requested: {path} (fit {status.fit}, batch {status.batch})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
        args = ["demo", *args]  # no command, or options alone: the demo's
    ns = parser().parse_args(args)
    if ns.command == "stop":
        return stop(ns.dir)
    from .demo import run_from_args

    return run_from_args(ns)


if __name__ == "__main__":
    sys.exit(main())
