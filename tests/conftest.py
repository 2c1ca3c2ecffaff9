"""Shared pytest fixtures: the API emulator on a free loopback port."""

from collections.abc import Iterator

import pytest

from daemon.sandbox import Emulator, EmulatorConfig


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A running emulator without throttling; tests that exercise the throttle configure it."""
    emu = Emulator(EmulatorConfig(rate_limit=None))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()
