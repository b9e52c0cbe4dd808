"""The tamper-evident audit log: one chained, fsynced JSON record per event (docs/audit.md).

    from sandboxd.audit import AuditWriter, AuditLogger, AsyncAuditLogger, job_finished_record, verify

Names are imported on first use, so ``sandboxd.audit.cli`` stays light (no structlog) for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AuditError": "chain", "load_key": "chain", "canonical": "chain", "GENESIS": "chain",
    "AuditWriter": "writer",
    "AuditLogger": "logger", "AsyncAuditLogger": "logger",
    "job_finished_record": "records", "argv_digest": "records", "scrub": "records",
    "verify": "verifier", "Report": "verifier", "Problem": "verifier",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sandboxd.audit' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sandboxd.audit.{module}"), name)
