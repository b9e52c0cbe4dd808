"""The service's settings: embedded defaults, then a TOML file, then SANDBOXD_* environment
variables, then command-line flags. Every setting is documented in docs/service.md."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sandboxd.errors import PolicyError, SandboxdInputError


def default_state_dir() -> str:
    if os.environ.get("SANDBOXD_STATE_DIR"):
        return os.environ["SANDBOXD_STATE_DIR"]
    if os.geteuid() == 0:
        return "/var/lib/sandboxd"
    return str(Path.home() / ".local" / "state" / "sandboxd")


class ServiceConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOXD_", extra="forbid")

    listen: str = Field(default="127.0.0.1:8080", description="HOST:PORT to serve HTTP on ('' for none)")
    unix_socket: str | None = Field(default=None, description="also serve on this Unix socket path")
    state_dir: str = Field(default_factory=default_state_dir, description="job store, tokens, work dirs")
    slots: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=1024,
                       description="jobs running at once")
    max_queued_total: int = Field(default=10_000, ge=1, description="queued jobs over all tenants")
    max_body_bytes: int = Field(default=16 << 20, ge=1024, description="request body cap (413 past it)")
    max_wait_s: float = Field(default=300.0, gt=0, description="longest a wait=true request is held")
    request_timeout_s: float = Field(default=30.0, gt=0, description="per-request time for non-waiting calls")
    cancel_on_disconnect: bool = Field(default=True, description="cancel a wait=true job when its client goes")
    shutdown_grace_s: float = Field(default=10.0, ge=0, description="time running jobs get on SIGTERM")
    max_file_bytes: int = Field(default=8 << 20, ge=0, description="per file placed in or copied out")
    max_files_total_bytes: int = Field(default=32 << 20, ge=0, description="all files of one run")
    default_output_bytes: int = Field(default=1 << 20, ge=0, description="output kept per stream when the policy sets none")
    default_wall_time_s: float = Field(default=60.0, gt=0, description="wall-time limit when neither policy nor request sets one")
    audit_log: str | None = Field(default=None, description="directory of the audit log (default: <state_dir>/audit)")
    audit_hmac_key: str | None = Field(default=None, description="key file: records also carry an HMAC-SHA-256")
    retention_s: float = Field(default=7 * 86400, gt=0, description="finished runs are kept this long, then pruned")
    pool_size: int = Field(default=2, ge=0, le=16, description="warm sandboxes kept ready per policy")
    stage_runner: Literal["auto", "native", "python"] = Field(
        default="auto", description="which code builds sandboxes: the compiled runner when built (auto), "
                                    "only it (native: jobs are refused without it), or the Python stages")
    log_level: str = Field(default="info")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value == "":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise ValueError(f"{value!r} is not HOST:PORT")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def audit_dir(self) -> str:
        return self.audit_log or str(Path(self.state_dir) / "audit")


def load_config(config_file: str | None, overrides: dict[str, Any]) -> ServiceConfig:
    """File values, under environment variables, under explicit overrides (flags)."""
    data: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise SandboxdInputError(f"--config {config_file}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise PolicyError(config_file, "(toml)", f"malformed TOML: {exc}") from None
    env = {key[len("SANDBOXD_"):].lower(): value for key, value in os.environ.items()
           if key.startswith("SANDBOXD_") and key[len("SANDBOXD_"):].lower() in ServiceConfig.model_fields}
    merged = {**data, **env, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        # init kwargs take precedence in pydantic-settings, so the merge above decides the order.
        return ServiceConfig(**merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise PolicyError(config_file or "configuration", key or "(config)", first["msg"]) from None
