"""`python -m daemon`: the same as the `scm-daemon` command."""

import sys

from daemon.cli import main

sys.exit(main())
