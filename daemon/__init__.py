"""scm-daemon: a hot-folder service that uploads supply-chain data to the Scantrust SCM API."""

__version__ = "0.1.0"
