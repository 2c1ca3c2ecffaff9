"""Shared pytest fixtures: the API emulator on a free loopback port, and an HTTP session holding its token."""

from collections.abc import Iterator

import pytest
import requests

from daemon.sandbox import Emulator, EmulatorConfig, ManualClock

TOKEN = "sandbox-token"


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
