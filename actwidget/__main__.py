"""`python -m actwidget`: a small command line.

```sh
python -m actwidget [demo] [--epochs N ...]   # the headless demo (see actwidget.demo)
python -m actwidget stop PATH                 # ask the run written in PATH to stop
```
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def stop(argv: Sequence[str]) -> int:
    """`stop PATH`: write a stop request into a run directory; 0 if a fit runs there."""
    parser = argparse.ArgumentParser(
        prog="python -m actwidget stop",
        description="Ask the training run that writes this run directory to stop "
        "(at its next check, within about half a second plus a batch).",
    )
    parser.add_argument("path", help="the run directory (run_dir=... of the training)")
    args = parser.parse_args(argv)

    from .runfile import RunFollower, request_stop
    from .stats import StatsFileError

    try:
        asked = request_stop(args.path)
        status = RunFollower(args.path).status
    except (StatsFileError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not asked:
        print(f"nothing runs in {args.path} (it is {status.state.value})", file=sys.stderr)
        return 1
    print(f"stop requested: {args.path} (fit {status.fit}, batch {status.batch})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["stop"]:
        return stop(args[1:])
    from .demo import main as demo

    return demo(args[1:] if args[:1] == ["demo"] else args)


if __name__ == "__main__":
    sys.exit(main())
