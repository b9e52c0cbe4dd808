"""The compiled stage runner: chosen when built, the same facts as the Python stages, and
refusal (never a silent downgrade) when it is demanded but missing."""

from __future__ import annotations

import os
import time

import pytest

from sandboxd import native
from sandboxd.jail.plan import JobSpec
from sandboxd.policy.compile import compile_template
from sandboxd.policy.load import load_policy
from sandboxd.spawner import protocol
from sandboxd.spawner.client import SpawnerClient
from sandboxd.supervise.output import pipe_for
from sandboxd.supervise.runner import run_job

PROBE = ("/bin/sh", "-c", "id -u; hostname; readlink /proc/self/ns/pid; echo $$; ls /; cat /proc/1/cmdline")


def _spawner(runner: str) -> SpawnerClient:
    return SpawnerClient.start_exec(runner=runner)


def _run(client, template, argv, workdir=None):
    out, out_w = pipe_for("stdout", 1 << 20, None, keep=True)
    err, err_w = pipe_for("stderr", 1 << 20, None, keep=True)
    null = os.open("/dev/null", os.O_RDONLY)
    try:
        job = JobSpec(job_id=f"native-{time.monotonic_ns()}", argv=tuple(argv), workdir=workdir)
        result = run_job(client, template, job, (null, out_w, err_w), [out, err], close_after_send=(out_w, err_w))
    finally:
        os.close(null)
    return result, bytes(out.kept).decode(errors="replace"), bytes(err.kept).decode(errors="replace")


def _pong(client) -> dict:
    protocol.send(client.sock, {"op": "ping"})
    return client._wait_for(lambda e: e.kind == "pong").data


@pytest.fixture(scope="module")
def template():
    return compile_template(load_policy("default"))


@pytest.fixture(scope="module")
def both(template):
    usable, why = native.status()
    if not usable:
        pytest.fail(f"the compiled runner must be built for the tests (make native): {why}")
    clients = {"native": _spawner("native"), "python": _spawner("python")}
    for client in clients.values():
        client.define(template, pool=1)
    yield clients
    for client in clients.values():
        client.close()


def test_the_spawner_says_which_runner_it_uses(both) -> None:
    assert _pong(both["native"])["runner"]["kind"] == "native"
    assert _pong(both["python"])["runner"]["kind"] == "python"


def test_both_runners_apply_and_report_the_same_layers(both, template) -> None:
    results = {}
    for kind, client in both.items():
        result, out, err = _run(client, template, PROBE)
        assert result.verdict == "OK", (kind, result, err)
        assert result.layers["runner"] == kind
        results[kind] = (result, out)
    (native_result, native_out), (python_result, python_out) = results["native"], results["python"]
    # The same view from inside, but never the same namespaces.
    n_lines, p_lines = native_out.splitlines(), python_out.splitlines()
    assert n_lines[0] == p_lines[0] == "0" and n_lines[1] == p_lines[1] == template.hostname
    assert n_lines[2] != p_lines[2]
    assert n_lines[3] == p_lines[3] == "2", "the program is PID 2 under an init"
    assert n_lines[4:-1] == p_lines[4:-1], "the same root"
    assert "/" not in n_lines[-1], f"no host path in the init's command line: {n_lines[-1]!r}"
    n_layers, p_layers = native_result.layers, python_result.layers
    for key in ("work", "rlimits", "landlock", "seccomp", "capabilities", "no_new_privs", "seccomp_mode"):
        assert n_layers[key] == p_layers[key], key
    assert n_layers["capabilities_empty"] and n_layers["no_new_privs"] and n_layers["seccomp_mode"] == 2
    assert all(n_layers["namespaces"].values()), n_layers["namespaces"]
    assert n_layers["id_map"]["setgroups"] == p_layers["id_map"]["setgroups"] == "deny"
    assert [(m["path"], m["options"], m["fstype"]) for m in n_layers["mounts"]] == \
        [(m["path"], m["options"], m["fstype"]) for m in p_layers["mounts"]]
    assert set(n_layers["stage_ms"]["job"]) == set(p_layers["stage_ms"]["job"])


def test_exec_failures_are_named_alike(both, template) -> None:
    for kind, client in both.items():
        missing, _, _ = _run(client, template, ["/no/such/program"])
        assert missing.exit_code == 127 and missing.error["stage"] == "exec", (kind, missing)
        assert "No such file or directory" in missing.error["detail"]
        nul, _, _ = _run(client, template, ["/bin/echo", "a\0b"])
        assert nul.exit_code == 126 and "embedded null byte" in nul.error["detail"], (kind, nul)


def test_a_named_seccomp_kill_under_the_compiled_init(both, template) -> None:
    # unshare(2) is killed by the default profile; the compiled init names it.
    result, _, err = _run(both["native"], template, ["/usr/bin/python3", "-c", "import ctypes; ctypes.CDLL(None).syscall(272, 0x10000000)"])
    assert result.verdict == "SECCOMP", (result, err)
    assert result.seccomp["syscall"] == "unshare", result.seccomp


def test_a_bad_runner_setting_refuses_jobs(template) -> None:
    client = _spawner("no-such-runner")
    try:
        client.define(template)
        result, _, _ = _run(client, template, ["/bin/true"])
        assert result.verdict != "OK"
        assert result.error["stage"] == "stage runner", result.error
        assert "SANDBOXD_STAGE_RUNNER" in result.error["detail"]
    finally:
        client.close()


def test_native_demanded_but_not_built_refuses_jobs(template, tmp_path) -> None:
    """A copy of the package without the binary: 'native' refuses, 'auto' falls back."""
    import shutil
    import subprocess
    import sys

    from tests.sandboxes import REPO

    shutil.copytree(REPO / "sandboxd", tmp_path / "sandboxd",
                    ignore=shutil.ignore_patterns("__pycache__", "sandboxd-stage"))
    script = (
        "import json, sys\n"
        "from sandboxd import native\n"
        "print(json.dumps([native.choose('native').kind, native.choose('auto').kind]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '["unavailable", "python"]'
