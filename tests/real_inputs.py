"""Real files from other projects (``../shared/real-inputs``), read in place, never copied."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_SECCOMP = REPO.parent / "shared" / "real-inputs" / "seccomp"
REAL_SECCOMP_FILES = sorted(REAL_SECCOMP.glob("*.json")) if REAL_SECCOMP.is_dir() else []
needs_real_seccomp = pytest.mark.skipif(
    not REAL_SECCOMP_FILES, reason=f"real seccomp profiles are not present at {REAL_SECCOMP}")
