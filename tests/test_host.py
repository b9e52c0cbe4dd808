"""tests/host.py: a missing host feature skips locally and fails on CI."""

from __future__ import annotations

import pytest

from tests.host import host_lacks


def test_skips_off_ci(monkeypatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no widget"):
        host_lacks("no widget")


def test_fails_on_ci(monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI machine should provide this, but: no widget"):
        host_lacks("no widget")
