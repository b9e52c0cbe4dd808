"""What a test needs from the host, and what happens when the host lacks it.

On a developer's machine a missing host feature (root, a cgroup hierarchy, a real input
file, a tool) skips the test and says why. On CI (``CI`` set), whose machine is specified to
have every one of them, the same gap fails the test: a skip there would hide a broken set-up
behind a green run.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def host_lacks(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"the CI machine should provide this, but: {reason}", pytrace=False)
    pytest.skip(reason)
