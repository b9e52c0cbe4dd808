"""Building audit records from what the service knows, without secrets.

Tokens never reach a record. The job's environment is logged by *name*; a value is kept
only for a name the policy marks loggable. argv is logged with its SHA-256 digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, is_dataclass
from typing import Any, Iterable, Mapping

from sandboxd.audit.chain import canonical

# Keys whose value is replaced wherever they occur in a record (any depth, any case).
SECRET_KEYS = frozenset({"token", "secret", "password", "passwd", "authorization", "api_key", "apikey",
                         "bearer", "cookie", "hmac_key", "private_key", "credentials"})
REDACTED = "[redacted]"

# The parts of a result's ``layers`` an audit record keeps: what confined the job.
LAYER_KEYS = ("namespaces", "id_map", "cgroup", "landlock", "seccomp", "seccomp_mode", "no_new_privs",
              "capabilities_empty", "network", "rlimits", "mounts")


def argv_digest(argv: Iterable[str]) -> str:
    """SHA-256 of the canonical JSON list of the arguments (unambiguous, unlike joining)."""
    return hashlib.sha256(canonical([str(a) for a in argv])).hexdigest()


def env_fields(env: Mapping[str, str] | Iterable[tuple[str, str]] | None,
               loggable_env: Iterable[str] = ()) -> dict[str, Any]:
    """``env_names`` (every name, sorted) and ``env_values`` (only the loggable ones)."""
    pairs = list(env.items()) if isinstance(env, Mapping) else list(env or ())
    allowed = set(loggable_env)
    names = sorted({str(name) for name, _ in pairs})
    values = {str(name): str(value) for name, value in pairs if name in allowed}
    return {"env_names": names, "env_values": dict(sorted(values.items()))}


def limits_dict(limits: Any) -> dict[str, Any] | None:
    if limits is None:
        return None
    if is_dataclass(limits):
        return asdict(limits)
    return dict(limits)


_ATOMS = frozenset({str, int, float, bool, type(None)})


def scrub(value: Any) -> Any:
    """``value`` with every secret-named key's value replaced by ``[redacted]``, at any depth."""
    kind = type(value)
    if kind in _ATOMS:  # the common cases first: isinstance against an ABC is slow
        return value
    if kind is dict:
        return {k: (REDACTED if str(k).lower() in SECRET_KEYS and v is not None else scrub(v))
                for k, v in value.items()}
    if kind is list:
        return [scrub(v) for v in value]
    if isinstance(value, Mapping):
        return {k: (REDACTED if str(k).lower() in SECRET_KEYS and v is not None else scrub(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def job_fields(*, request_id: str | None, tenant: str | None, client: str | None,
               argv: Iterable[str] | None = None,
               env: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
               loggable_env: Iterable[str] = (), limits: Any = None) -> dict[str, Any]:
    fields: dict[str, Any] = {"request_id": request_id, "tenant": tenant, "client": client}
    if argv is not None:
        argv = [str(a) for a in argv]
        fields["argv"] = argv
        fields["argv_sha256"] = argv_digest(argv)
    if env is not None:
        fields.update(env_fields(env, loggable_env))
    if limits is not None:
        fields["limits"] = limits_dict(limits)
    return fields


def job_finished_record(result: Mapping[str, Any], *, request_id: str | None, tenant: str | None,
                        client: str | None, argv: Iterable[str],
                        env: Mapping[str, str] | Iterable[tuple[str, str]] | None,
                        loggable_env: Iterable[str] = (), limits: Any = None) -> dict[str, Any]:
    """The ``job_finished`` record for ``result`` (a ``RunResult.to_dict()``).

    ``limits`` (a ``JobLimits`` or a mapping) are the limits in force for the job; the result
    itself only says which one fired (``limit``). ``time`` and the chain fields are added by
    the logger and the writer.
    """
    layers = result.get("layers") or {}
    record: dict[str, Any] = {"event": "job_finished", "job_id": result.get("job_id")}
    record.update(job_fields(request_id=request_id, tenant=tenant, client=client, argv=argv, env=env,
                             loggable_env=loggable_env, limits=limits))
    record.update({
        "policy": {"name": (result.get("policy") or {}).get("name"),
                   "hash": (result.get("policy") or {}).get("hash")},
        "verdict": result.get("verdict"),
        "exit_code": result.get("exit_code"),
        "signal": result.get("signal"),
        "limit": result.get("limit"),
        "usage": result.get("usage"),
        "layers": {key: layers.get(key) for key in LAYER_KEYS if key in layers},
        "seccomp": result.get("seccomp"),
        "denials": result.get("denials"),
        "error": result.get("error"),
        "output": result.get("output"),
    })
    return scrub(record)
