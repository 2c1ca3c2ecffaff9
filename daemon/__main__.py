"""`python -m daemon`: the same as the `scm-daemon` command."""

import gc
import sys


def run() -> int:
    """Import the command line and run it. The imports create a great many objects that live as long as the
    process; the garbage collector's passes over them while importing are wasted (a tenth of `scm-daemon status`,
    which must answer within a second on a big ledger), so it runs only once they are done."""
    gc.disable()
    try:
        from daemon.cli import main  # noqa: PLC0415
    finally:
        gc.enable()
    return main()


if __name__ == "__main__":
    sys.exit(run())
