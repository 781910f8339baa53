"""Fixtures shared by every test: hygiene checks, free ports, and real helper processes."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

from tests import hygiene

hygiene.install()

# Every daemon a test starts (as a child, or from the environment) announces itself over mDNS on loopback
# only: tests never send traffic beyond 127.0.0.0/8.
os.environ["MYCOEDGE_DISCOVERY_MDNS_INTERFACES"] = "127.0.0.1"


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    yield
    before = item.stash.get(_snapshot_key, None)
    if before is None or item.get_closest_marker("no_hygiene"):
        return
    found = hygiene.problems(before)
    if found:
        pytest.fail("test hygiene:\n  " + "\n  ".join(found), pytrace=False)


_snapshot_key = pytest.StashKey[dict]()  # type: ignore[type-arg]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_snapshot_key] = hygiene.snapshot()
