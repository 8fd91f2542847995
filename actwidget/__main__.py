"""`python -m actwidget`: the headless demo (same as `python -m actwidget.demo`)."""

import sys

from .demo import main

if __name__ == "__main__":
    sys.exit(main())
