"""Shared pytest fixtures: the API emulator on a free loopback port, and an HTTP session holding its token."""

import os
from collections.abc import Iterator

import pytest
import requests
from hypothesis import settings

from daemon import reporter
from daemon.sandbox import Emulator, EmulatorConfig, ManualClock

TOKEN = "sandbox-token"


@pytest.fixture(autouse=True)
def _process_umask() -> Iterator[None]:
    """A test that builds the production service in-process sets the process umask (027) for good, and the
    reporter reads the umask once: restore both after every test, so no test depends on which ran before it."""
    mask = os.umask(0o022)
    os.umask(mask)
    yield
    os.umask(mask)
    reporter._umask.cache_clear()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A running emulator without throttling; tests that exercise the throttle configure it."""
    emu = Emulator(EmulatorConfig(rate_limit=None))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A requests session that sends the emulator's token, as a client of the API would."""
    session = requests.Session()
    session.headers["Authorization"] = f"UAT {TOKEN}"
    yield session
    session.close()


@pytest.fixture
def clock() -> ManualClock:
    """A simulated clock for an emulator: it moves only when a test advances it, so nothing races."""
    return ManualClock()


pytest_plugins = ["backends"]

# No time limit per example: these machines are shared, and a timing assertion in a test is a flaky one (the
# benchmarks in bench/ measure speed). Hypothesis' health checks stay on.
settings.register_profile("scm", deadline=None)
settings.load_profile("scm")
