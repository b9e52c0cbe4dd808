"""docs/service.md documents every setting of the service."""

from __future__ import annotations

from sandboxd.service.config import ServiceConfig
from tests.service.conftest import REPO


def test_every_setting_is_documented():
    text = (REPO / "docs" / "service.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")}
    for name in ServiceConfig.model_fields:
        row = rows.get(f"`{name}`")
        assert row is not None, f"docs/service.md: no row for the setting {name}"
        assert f"`SANDBOXD_{name.upper()}`" in row, f"docs/service.md: {name} without its environment variable"
