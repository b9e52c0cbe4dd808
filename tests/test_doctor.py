"""``sandboxd doctor``: the real facts of this host, plus faked hosts through PROC/SYS."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from sandboxd import doctor
from sandboxd.doctor import Check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def checks() -> dict[str, Check]:
    result = doctor.run_checks()
    names = [c.name for c in result]
    assert len(names) == len(set(names))
    return {c.name: c for c in result}


# --------------------------------------------------------------------------- this host
def test_every_layer_reported(checks):
    assert set(checks) == {
        "user namespaces", "other namespaces", "cgroups", "landlock", "seccomp", "pidfd",
        "clone3", "close_range", "mount_setattr", "no_new_privs", "stage runner",
    }
    for c in checks.values():
        assert c.status in ("ok", "missing", "degraded", "unknown")
        assert c.detail


def test_needed_by_default_flags(checks):
    needed = {n for n, c in checks.items() if c.needed_by_default}
    assert needed == {"user namespaces", "other namespaces", "pidfd", "close_range",
                      "mount_setattr", "seccomp", "landlock"}
    assert checks["cgroups"].needed_by_default is False


def test_user_namespaces_ok(checks):
    c = checks["user namespaces"]
    assert c.status == "ok", c
    assert "max_user_namespaces=" in c.detail
    if os.geteuid() == 0:
        assert f"as uid {doctor.NOBODY} with a mount: ok" in c.detail


def test_other_namespaces_ok(checks):
    c = checks["other namespaces"]
    assert c.status == "ok", c
    assert "user+pid+mount+net+ipc+uts+cgroup" in c.detail


def test_landlock_abi_at_least_6(checks):
    c = checks["landlock"]
    assert c.status == "ok", c
    abi = int(c.detail.split()[1].rstrip(":"))
    assert abi >= 6
    assert "scoping" in c.detail and "tcp" in c.detail and "fs" in c.detail


def test_cgroups_hybrid_v1_with_memory_pids(checks):
    c = checks["cgroups"]
    assert c.status == "ok", c
    assert "mode=hybrid" in c.detail
    assert "cgroup2 at /sys/fs/cgroup/unified" in c.detail
    facts = doctor.cgroup_facts()
    assert facts["mode"] == "hybrid"
    assert {"memory", "pids"} <= set(facts["v1"])
    assert facts["v1"]["memory"]["writable"] and facts["v1"]["pids"]["writable"]
    assert [v["mountpoint"] for v in facts["v2"]] == ["/sys/fs/cgroup/unified"]
    assert facts["memsw"] is True


def test_cgroup_probe_leaves_nothing_behind():
    doctor.cgroup_facts()
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        assert not [d for d in dirs if d.startswith("sandboxd-doctor-")], root
        if root.count("/") > 6:
            dirs[:] = []


def test_syscalls_present(checks):
    for name in ("pidfd", "close_range", "clone3", "mount_setattr", "no_new_privs"):
        assert checks[name].status == "ok", checks[name]
    assert "EINVAL" in checks["clone3"].detail


def test_seccomp_ok(checks):
    c = checks["seccomp"]
    assert c.status == "ok", c
    assert "kill_process" in c.detail and "user_notif" in c.detail
    assert "API level" in c.detail and "libseccomp 2." in c.detail


def test_json_is_valid(checks):
    data = json.loads(doctor.to_json(list(checks.values())))
    assert data["ok"] is True
    assert {c["name"] for c in data["checks"]} == set(checks)
    for c in data["checks"]:
        assert set(c) == {"name", "status", "detail", "fix", "needed_by_default"}


def test_main_table_returns_0(capsys):
    assert doctor.main([]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["LAYER", "STATUS", "NEEDED", "DETAIL"]
    assert "every layer the default policy needs is available" in out


def test_main_json_returns_0(capsys):
    assert doctor.main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_main_bad_option_no_traceback(capsys):
    assert doctor.main(["--bogus"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_as_unprivileged_user(rootless_sandbox):
    """As the unprivileged user the test set-up creates, the namespace layers still work
    (rootless use on this host): `sandboxd doctor --json` run by that user."""
    proc = subprocess.run([rootless_sandbox.python, "-m", "sandboxd", "doctor", "--json"], capture_output=True,
                          text=True, user=rootless_sandbox.uid, group=rootless_sandbox.gid, extra_groups=[],
                          cwd="/", env=rootless_sandbox.env, timeout=60)
    data = json.loads(proc.stdout)
    by = {c["name"]: c for c in data["checks"]}
    assert by["user namespaces"]["status"] == "ok", by["user namespaces"]
    assert by["other namespaces"]["status"] == "ok"
    assert by["landlock"]["status"] == "ok"
    assert proc.returncode == 0 and data["ok"] is True
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- faked hosts
def _fake_proc(tmp_path, **knobs: str):
    """A fake /proc holding only the given sysctls (dotted names)."""
    root = tmp_path / "proc"
    for key, value in knobs.items():
        path = root / "sys" / key.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return str(root)


def _probe_never_called(*a, **k):  # pragma: no cover - failure path
    raise AssertionError("no probe should run when user namespaces are disabled")


def test_max_user_namespaces_zero_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "PROC", _fake_proc(tmp_path, **{"user.max_user_namespaces": "0"}))
    monkeypatch.setattr(doctor, "_probe", _probe_never_called)
    c = doctor.check_user_namespaces()
    assert c.status == "missing"
    assert "max_user_namespaces=0" in c.detail
    assert "sysctl -w user.max_user_namespaces=" in c.fix
    assert c.needed_by_default


def _apparmor_probe(flags, drop_to=-1, mount=False):
    """What Ubuntu 24.04 does: unshare and maps succeed, capabilities inside are denied."""
    if mount:
        return {"ok": False, "stage": "mount", "errno": 1, "error": "[Errno 1] EPERM"}
    return {"ok": True, "stage": "done"}


def test_apparmor_restriction_is_missing_for_users(tmp_path, monkeypatch):
    proc = _fake_proc(tmp_path, **{
        "user.max_user_namespaces": "63000",
        "kernel.apparmor_restrict_unprivileged_userns": "1",
        "kernel.apparmor_restrict_unprivileged_unconfined": "1",
    })
    monkeypatch.setattr(doctor, "PROC", proc)
    monkeypatch.setattr(doctor, "_geteuid", lambda: 1000)
    monkeypatch.setattr(doctor, "_probe", _apparmor_probe)
    c = doctor.check_user_namespaces()
    assert c.status == "missing", c
    assert "apparmor_restrict_unprivileged_userns=1" in c.detail
    assert "failed at mount: EPERM" in c.detail
    # Both fixes, and the cost of the host-wide one.
    assert "userns," in c.fix and "apparmor_parser -r" in c.fix
    assert "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0" in c.fix
    assert "privilege" in c.fix
    assert "apparmor_restrict_unprivileged_unconfined" in c.fix

    table = doctor.render_table([c])
    assert "How to fix" in table and "    userns," in table
    assert "cannot run here" in table


def test_apparmor_restriction_as_root_is_degraded(tmp_path, monkeypatch):
    proc = _fake_proc(tmp_path, **{"kernel.apparmor_restrict_unprivileged_userns": "1"})
    monkeypatch.setattr(doctor, "PROC", proc)
    monkeypatch.setattr(doctor, "_geteuid", lambda: 0)
    monkeypatch.setattr(doctor, "_probe", _apparmor_probe)
    c = doctor.check_user_namespaces()
    assert c.status == "degraded"
    assert "works as root only" in c.detail
    assert "kernel.apparmor_restrict_unprivileged_userns=0" in c.fix


def test_probe_timeout_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "PROC", _fake_proc(tmp_path))
    monkeypatch.setattr(doctor, "_probe", lambda *a, **k: {"ok": False, "stage": "timeout",
                                                           "error": "timed out"})
    assert doctor.check_user_namespaces().status == "unknown"


def test_landlock_abi_zero_is_missing_with_lsm_fix(tmp_path, monkeypatch):
    sysroot = tmp_path / "sys"
    (sysroot / "kernel" / "security").mkdir(parents=True)
    (sysroot / "kernel" / "security" / "lsm").write_text("lockdown,capability,yama,apparmor\n")
    monkeypatch.setattr(doctor, "SYS", str(sysroot))
    monkeypatch.setattr(doctor, "_landlock_abi", lambda: 0)
    c = doctor.check_landlock()
    assert c.status == "missing"
    assert "lsm=lockdown,capability,yama,apparmor,landlock" in c.fix
    assert "CONFIG_SECURITY_LANDLOCK" in c.fix
    assert c.needed_by_default


def test_landlock_abi_zero_without_lsm_file(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "SYS", str(tmp_path))
    monkeypatch.setattr(doctor, "_landlock_abi", lambda: 0)
    c = doctor.check_landlock()
    assert c.status == "missing" and "lsm=" in c.fix and "landlock" in c.fix


def test_landlock_old_abi_is_degraded(monkeypatch):
    monkeypatch.setattr(doctor, "_landlock_abi", lambda: 4)
    c = doctor.check_landlock()
    assert c.status == "degraded"
    assert "ioctl_dev" in c.detail and "scoping" in c.detail
    assert "ABI >= 6" in c.fix


def test_crashing_probe_becomes_unknown(monkeypatch, capsys):
    def boom():
        raise RuntimeError("kaboom")

    monkeypatch.setattr(doctor, "_landlock_abi", boom)
    monkeypatch.setattr(doctor, "_CHECKS", [("landlock", True, doctor.check_landlock),
                                            ("pidfd", True, lambda: 1 / 0)])
    result = doctor.run_checks()
    assert [c.status for c in result] == ["unknown", "unknown"]
    assert "kaboom" in result[0].detail and "ZeroDivisionError" in result[1].detail
    assert doctor.main([]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err


def test_fake_cgroup_v2_without_delegation(tmp_path, monkeypatch):
    """Pure v2 host where this user owns nothing: degraded, with the Delegate=yes fix."""
    cg = tmp_path / "cg"
    (cg / "user.slice").mkdir(parents=True)
    (cg / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (cg / "cgroup.subtree_control").write_text("memory pids\n")
    (cg / "user.slice" / "cgroup.controllers").write_text("memory pids\n")
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    (proc / "mountinfo").write_text(
        f"30 23 0:26 / {cg} rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n")
    (proc / "cgroup").write_text("0::/user.slice\n")
    monkeypatch.setattr(doctor, "PROC", str(tmp_path / "proc"))
    monkeypatch.setattr(doctor, "_geteuid", lambda: 1000)
    monkeypatch.setattr(doctor.os, "access", lambda *a, **k: False)
    c = doctor.check_cgroups()
    assert c.status == "degraded", c
    assert "controllers=cpuset,cpu,io,memory,pids" in c.detail
    assert "subtree_control=memory,pids" in c.detail
    assert "systemd-run --user --scope -p Delegate=yes" in c.fix
    assert "cgroup.subtree_control" in c.fix  # cpu is not enabled for the subtree


def test_stage_runner_check_follows_the_setting(monkeypatch):
    from sandboxd import doctor

    monkeypatch.setenv("SANDBOXD_STAGE_RUNNER", "python")
    assert doctor.check_stage_runner().status == "degraded"
    monkeypatch.setenv("SANDBOXD_STAGE_RUNNER", "bogus")
    refused = doctor.check_stage_runner()
    assert refused.status == "missing" and "bogus" in refused.detail
    monkeypatch.setenv("SANDBOXD_STAGE_RUNNER", "native")
    assert doctor.check_stage_runner().status == "ok"  # `make test` builds it first
