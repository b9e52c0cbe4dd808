"""The API's request and response bodies: one set of pydantic models validates requests and
generates the OpenAPI document (``sandboxd.service.openapi``).

Unknown fields are rejected; every failure becomes HTTP 422 with the field named.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator,
                      model_validator)

from sandboxd.service import files as job_files

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_ARGV = 256
MAX_ARG_BYTES = 16_384


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _no_nul(value: str, what: str) -> str:
    """Text that can reach execve: no NUL byte, and valid Unicode (no lone surrogates)."""
    if "\0" in value:
        raise ValueError(f"{what} cannot contain a NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (a lone surrogate)") from None
    return value


def _copy_out_pattern(value: str) -> str:
    try:
        return job_files.validate_pattern(value, field="pattern")
    except job_files.FileError as exc:
        raise ValueError(exc.reason) from None


CopyOutPattern = Annotated[str, AfterValidator(_copy_out_pattern)]


def decode_base64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None


class FileInModel(_Strict):
    """A file placed in the job's work directory before it starts."""

    path: str = Field(min_length=1, max_length=255, description="relative path in the work directory")
    content: str | None = Field(default=None, description="UTF-8 text")
    content_base64: str | None = Field(default=None, description="bytes, base64")
    executable: bool = False

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        try:
            return job_files.validate_name(value)
        except job_files.FileError as exc:
            raise ValueError(exc.reason) from None

    @model_validator(mode="after")
    def _one_content(self) -> "FileInModel":
        if (self.content is None) == (self.content_base64 is None):
            raise ValueError("give exactly one of content and content_base64")
        if self.content_base64 is not None:
            decode_base64(self.content_base64, "content_base64")
        return self

    def data(self) -> bytes:
        if self.content is not None:
            return self.content.encode()
        return decode_base64(self.content_base64 or "", "content_base64")


class LimitsModel(_Strict):
    """Limits for this run; each may only narrow the policy's."""

    cpu_time: float | None = Field(default=None, gt=0, le=86_400, description="seconds of CPU, all processes")
    wall_time: float | None = Field(default=None, gt=0, le=86_400, description="seconds")
    memory: int | None = Field(default=None, gt=0, description="bytes")
    pids: int | None = Field(default=None, ge=1, le=65_536)
    cpus: float | None = Field(default=None, gt=0, le=1024)
    output: int | None = Field(default=None, ge=0, description="bytes kept of each of stdout and stderr")
    file_size: int | None = Field(default=None, ge=0, description="bytes one file may grow to")


class RunRequest(_Strict):
    policy: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    argv: list[str] = Field(min_length=1, max_length=MAX_ARGV)
    stdin: str | None = Field(default=None, description="UTF-8 text on the job's stdin")
    stdin_base64: str | None = Field(default=None, description="bytes on the job's stdin, base64")
    files: list[FileInModel] = Field(default_factory=list, max_length=256)
    copy_out: list[CopyOutPattern] = Field(default_factory=list, max_length=64,
                                description="names or globs in the work directory to return")
    env: dict[str, str] = Field(default_factory=dict)
    limits: LimitsModel = Field(default_factory=LimitsModel)
    wait: bool = Field(default=True, description="answer with the result (200) or at once (202)")
    output_encoding: Literal["text", "base64"] = "text"

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        for index, arg in enumerate(value):
            _no_nul(arg, f"argv[{index}]")
            if len(arg.encode()) > MAX_ARG_BYTES:
                raise ValueError(f"argv[{index}] is longer than {MAX_ARG_BYTES} bytes")
        if not value[0]:
            raise ValueError("argv[0] cannot be empty")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 256:
            raise ValueError("at most 256 environment variables")
        for name, item in value.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            _no_nul(item, f"env[{name}]")
        return value

    @field_validator("stdin_base64")
    @classmethod
    def _stdin(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A field validator (not a model one) so that the 422 names the field.
        if value is not None and info.data.get("stdin") is not None:
            raise ValueError("give at most one of stdin and stdin_base64")
        if value is not None:
            decode_base64(value, "stdin_base64")
        return value

    def stdin_bytes(self) -> bytes:
        if self.stdin is not None:
            return self.stdin.encode()
        if self.stdin_base64 is not None:
            return decode_base64(self.stdin_base64, "stdin_base64")
        return b""


class FileOutModel(BaseModel):
    path: str
    size: int
    content_base64: str | None = None
    refused: str | None = Field(default=None, description="why the file was not returned")


class RunResultModel(BaseModel):
    """The job's result: the same schema as ``sandboxd run --result`` plus the API's fields."""

    model_config = ConfigDict(extra="allow")
    id: str
    status: Literal["finished"]
    verdict: str
    exit_code: int | None
    signal: int | None
    usage: dict[str, Any]
    limit: dict[str, Any] | None
    policy: dict[str, Any]
    layers: dict[str, Any]
    error: dict[str, Any] | None = None
    seccomp: dict[str, Any] | None = None
    denials: dict[str, Any] | None = None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    files: list[FileOutModel] = Field(default_factory=list)


class RunStatusModel(BaseModel):
    id: str
    status: Literal["queued", "running", "finished", "failed", "cancelled"]
    tenant: str | None = None
    policy: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    reason: str | None = Field(default=None, description="why a run failed or was cancelled")
    result: RunResultModel | None = None


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. invalid_request, unauthorized")
    message: str
    field: str | None = Field(default=None, description="the request field at fault, dotted")


class ErrorModel(BaseModel):
    error: ErrorDetail


class PolicyInfoModel(BaseModel):
    name: str
    hash: str
    description: str


class PoliciesModel(BaseModel):
    policies: list[PolicyInfoModel]


class HealthModel(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str | None = None
