from __future__ import annotations

import shutil

import pytest

from tests.host import host_lacks
from tests.sandboxes import Runner, root_runner, rootless_runner


@pytest.fixture(scope="session")
def root_sandbox() -> Runner:
    return root_runner()


@pytest.fixture(scope="session")
def rootless_sandbox():
    runner = rootless_runner()
    if isinstance(runner, str):
        host_lacks(runner)
    yield runner
    if runner.scratch is not None:
        shutil.rmtree(runner.scratch, ignore_errors=True)


@pytest.fixture(params=["root", "rootless"])
def sandbox(request) -> Runner:
    """Each jail test runs twice: started by root, and started by an unprivileged user."""
    if request.param == "root":
        return request.getfixturevalue("root_sandbox")
    return request.getfixturevalue("rootless_sandbox")
