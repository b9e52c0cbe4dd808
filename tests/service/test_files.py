"""sandboxd.service.files against a simulated hostile job.

No sandbox is needed: the "job" is this test creating entries straight in a temporary work
directory (as root here, so it can also make device nodes). Every hostile case has a host
canary holding a secret outside the work directory; the secret must never come back and
the canary must never change. The open paths run twice: through openat2(2) and through
the O_NOFOLLOW fallback used when the kernel has no openat2.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from sandboxd.errors import SandboxdInputError
from sandboxd.service import files
from sandboxd.service.files import (
    CopyOutLimits,
    FileError,
    FileIn,
    FileOut,
    copy_out,
    place_files,
    remove_workdir,
    validate_name,
    validate_pattern,
)
from tests.host import host_lacks

SECRET = b"TOP-SECRET-host-canary-7f3a"
IS_ROOT = os.geteuid() == 0
NOBODY = 65534


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["openat2", "fallback"])
def opener(request, monkeypatch) -> str:
    if request.param == "openat2":
        if not files.openat2_available():
            host_lacks("this kernel has no openat2(2)")
    else:
        monkeypatch.setitem(files._openat2_state, "missing", True)
        assert not files.openat2_available()
    return request.param


@pytest.fixture
def host(tmp_path) -> Path:
    """A host directory outside the work directory with a secret in it."""
    d = tmp_path / "host"
    d.mkdir()
    (d / "secret").write_bytes(SECRET)
    return d


@pytest.fixture
def workdir(tmp_path) -> Path:
    d = tmp_path / "work"
    d.mkdir(mode=0o755)
    return d


def host_unchanged(host: Path) -> None:
    assert sorted(p.name for p in host.iterdir()) == ["secret"]
    assert (host / "secret").read_bytes() == SECRET


def no_secret(results: list[FileOut]) -> None:
    for r in results:
        assert r.data is None or SECRET not in r.data


def by_path(results: list[FileOut]) -> dict[str, FileOut]:
    out = {r.path: r for r in results}
    assert len(out) == len(results), "each entry is reported once"
    return out


def timed(fn, *args, timeout: float = 5.0, **kwargs):
    """fn(*args) in a daemon thread; fails (instead of hanging) if it takes over ``timeout``."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as err:  # pragma: no cover - re-raised below
            box["error"] = err

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    elapsed = time.monotonic() - start
    assert not thread.is_alive(), f"{fn.__name__} still running after {timeout} s (blocked?)"
    if "error" in box:
        raise box["error"]
    return box["value"], elapsed


def as_nobody(fn, *args) -> object:
    """``fn(*args)`` in a forked child running as uid/gid 65534: the service is not always root.

    Returns what ``fn`` returned (its repr, evaluated back), or raises AssertionError with
    the child's exception.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                text = "ok " + repr(fn(*args))
            except BaseException as err:
                text = f"error {type(err).__name__}: {err}"
            os.write(write_end, text.encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert text.startswith("ok "), text
    return eval(text[3:], {"FileOut": FileOut})


@pytest.fixture
def shared_tmp():
    """A temporary directory uid 65534 can reach (pytest's tmp_path is root-only)."""
    d = tempfile.mkdtemp(prefix="sandboxd-files-")
    os.chmod(d, 0o755)
    yield Path(d)
    remove_workdir(d)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("bad, why", [
    ("/etc/passwd", "absolute"),
    ("..", "'..'"),
    ("../x", "'..'"),
    ("a/../b", "'..'"),
    ("a/..", "'..'"),
    (".", "'.'"),
    ("./a", "'.'"),
    ("a/./b", "'.'"),
    ("", "empty"),
    ("a//b", "empty component"),
    ("a/", "empty component"),
    ("a\x00b", "NUL"),
    ("a\nb", "control character"),
    ("a\rb", "control character"),
    ("a\x1bb", "control character"),
    ("a\x7fb", "control character"),
    ("a\x85b", "control character"),
    ("a\u2028b", "control character"),
    ("a\udcffb", "control character"),
    ("a\\b", "backslash"),
    ("x" * 256, "longer than 255"),
    ("/".join(["abcdefghi"] * 30), "longer than 255"),
])
def test_bad_names_raise_naming_the_field(bad, why):
    with pytest.raises(FileError) as caught:
        validate_name(bad, field="files[3].path")
    text = str(caught.value)
    assert text.startswith("files[3].path: "), text
    assert why in text
    assert "\n" not in text and "\r" not in text and len(text) < 300
    assert isinstance(caught.value, SandboxdInputError)


def test_name_length_caps_are_bytes_and_configurable():
    assert validate_name("é" * 127) == "é" * 127  # 254 bytes
    with pytest.raises(FileError, match="longer than 255"):
        validate_name("é" * 128)
    with pytest.raises(FileError, match="component longer than 10"):
        validate_name("a/" + "b" * 11, max_component=10)
    with pytest.raises(FileError, match="longer than 8"):
        validate_name("abc/defgh", max_length=8)
    assert validate_name("x" * 1000, max_length=4096, max_component=1000) == "x" * 1000


def test_non_string_name():
    with pytest.raises(FileError, match="must be a string"):
        validate_name(b"abc", field="p")  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [
    "a", "a.txt", ".hidden", "..foo", "foo..", "...", "dir/sub/file.py", "with space", "-dash",
    "ünïcödé/名前.txt", "*literal?[x]", "a" * 255, "emoji-\U0001F600", "zwj-\u200d",
])
def test_good_names_pass_unchanged(good):
    assert validate_name(good) == good


@pytest.mark.parametrize("good", ["*", "**", "*.txt", "out/*", "out/**", "**/*.log", "a/**/b/*.c",
                                  "file?.[ch]", "[!.]*", "exact/name.txt"])
def test_good_patterns(good):
    assert validate_pattern(good) == good


@pytest.mark.parametrize("bad, why", [
    ("/abs/*", "absolute"), ("../*", "'..'"), ("a/../*", "'..'"), ("./*", "'.'"), ("", "empty"),
    ("a//*", "empty component"), ("*\x00", "NUL"), ("*\n", "control"), ("a**", "whole component"),
    ("**b/c", "whole component"), ("***", "whole component"), ("*" * 300, "longer than 255"),
    ("a\\*", "backslash"),
])
def test_bad_patterns(bad, why):
    with pytest.raises(FileError) as caught:
        validate_pattern(bad, field="copy_out[1]")
    assert str(caught.value).startswith("copy_out[1]: ")
    assert why in str(caught.value)


def test_file_error_from_one_message_is_one_line():
    err = FileError("files[0].content: larger\nthan allowed")
    assert str(err) == "files[0].content: larger\\nthan allowed"
    err = FileError("x" * 10_000 + "\n", "bad", field="f")
    assert len(str(err)) < 200 and "\n" not in str(err)


# --------------------------------------------------------------------------- place_files


def test_place_nested_files_modes_and_exec_bit(workdir, opener):
    old = os.umask(0o077)  # the service's umask must not change the modes
    try:
        place_files(str(workdir), [
            FileIn("main.py", b"print(1)\n"),
            FileIn("bin/run", b"#!/bin/sh\n", executable=True),
            FileIn("a/b/c/d.bin", bytes(range(256)) * 1000),
            FileIn("a/b/e.txt", b""),
        ])
    finally:
        os.umask(old)
    assert (workdir / "main.py").read_bytes() == b"print(1)\n"
    assert (workdir / "a/b/c/d.bin").read_bytes() == bytes(range(256)) * 1000
    assert (workdir / "a/b/e.txt").read_bytes() == b""
    assert stat.S_IMODE((workdir / "main.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((workdir / "bin/run").stat().st_mode) == 0o755
    for d in ("bin", "a", "a/b", "a/b/c"):
        assert stat.S_IMODE((workdir / d).stat().st_mode) == 0o755


@pytest.mark.skipif(not IS_ROOT, reason="chown needs root")
def test_place_files_chowns_to_owner(workdir):
    place_files(str(workdir), [FileIn("d/f", b"x")], owner=(NOBODY, NOBODY + 1))
    for p in (workdir / "d", workdir / "d/f"):
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY + 1)
    assert workdir.stat().st_uid == 0  # the work directory itself is left alone


def test_place_refuses_symlink_parent(workdir, host, opener):
    (workdir / "sub").symlink_to(host)
    with pytest.raises(FileError, match=r'files\[0\]\.path: "sub/x": "sub" is a symlink'):
        place_files(str(workdir), [FileIn("sub/x", b"pwned")])
    host_unchanged(host)


def test_place_refuses_symlink_deeper_parent(workdir, host, opener):
    (workdir / "a/b").mkdir(parents=True)
    (workdir / "a/b/c").symlink_to(host)
    with pytest.raises(FileError, match='"a/b/c" is a symlink'):
        place_files(str(workdir), [FileIn("a/b/c/d/x", b"pwned")])
    host_unchanged(host)


def test_place_refuses_symlink_at_file_path(workdir, host, opener):
    (workdir / "x").symlink_to(host / "secret")
    (workdir / "dangling").symlink_to(host / "new-file")
    with pytest.raises(FileError, match="already exists"):
        place_files(str(workdir), [FileIn("x", b"pwned")])
    with pytest.raises(FileError, match="already exists"):
        place_files(str(workdir), [FileIn("dangling", b"pwned")])
    host_unchanged(host)


def test_place_refuses_existing_names(workdir, opener):
    (workdir / "f").write_bytes(b"old")
    with pytest.raises(FileError, match=r'files\[1\]\.path: "f": already exists'):
        place_files(str(workdir), [FileIn("g", b"1"), FileIn("f", b"new")])
    assert (workdir / "f").read_bytes() == b"old"
    with pytest.raises(FileError, match="already exists"):
        place_files(str(workdir), [FileIn("dup", b"1"), FileIn("dup", b"2")])
    assert (workdir / "dup").read_bytes() == b"1"
    with pytest.raises(FileError, match='"f" is a symlink or not a directory'):
        place_files(str(workdir), [FileIn("f/inner", b"1")])


def test_place_validates_names(workdir):
    with pytest.raises(FileError, match=r"files\[0\]\.path"):
        place_files(str(workdir), [FileIn("../escape", b"1")])
    assert not (workdir.parent / "escape").exists()


def test_place_refuses_symlinked_workdir(tmp_path, host):
    link = tmp_path / "worklink"
    link.symlink_to(host)
    with pytest.raises(OSError):
        place_files(str(link), [FileIn("x", b"1")])
    host_unchanged(host)


# --------------------------------------------------------------------------- copy_out: normal


def test_copy_out_normal_file_and_glob(workdir, opener):
    payload = bytes(range(256)) * 3
    (workdir / "result.bin").write_bytes(payload)
    (workdir / "out").mkdir()
    for i in range(5):
        (workdir / "out" / f"{i}.txt").write_bytes(f"file {i}\n".encode())
    (workdir / "out" / "skip.log").write_bytes(b"no")
    results = copy_out(str(workdir), ["result.bin", "out/*.txt"])
    assert [r.path for r in results] == ["out/0.txt", "out/1.txt", "out/2.txt", "out/3.txt", "out/4.txt",
                                         "result.bin"]
    got = by_path(results)
    assert got["result.bin"] == FileOut("result.bin", payload, len(payload), None)
    for i in range(5):
        assert got[f"out/{i}.txt"].data == f"file {i}\n".encode()


def test_copy_out_double_star_and_missing(workdir, opener):
    (workdir / "a/b/c").mkdir(parents=True)
    (workdir / "a/b/c/deep.log").write_bytes(b"deep")
    (workdir / "top.log").write_bytes(b"top")
    (workdir / "a/x.txt").write_bytes(b"x")
    assert [r.path for r in copy_out(str(workdir), ["**/*.log"])] == ["a/b/c/deep.log", "top.log"]
    assert [r.path for r in copy_out(str(workdir), ["a/**"])] == ["a/b/c/deep.log", "a/x.txt"]
    assert copy_out(str(workdir), ["nope", "a/nope", "nothing/*"]) == []
    assert copy_out(str(workdir), []) == []
    # one entry matched by two patterns is reported once
    assert [r.path for r in copy_out(str(workdir), ["top.log", "*.log", "**"])] == [
        "a/b/c/deep.log", "a/x.txt", "top.log"]


def test_copy_out_rejects_bad_patterns(workdir):
    with pytest.raises(FileError, match=r"copy_out\[1\]"):
        copy_out(str(workdir), ["ok", "../*"])
    with pytest.raises(FileError, match="at most 2 patterns"):
        copy_out(str(workdir), ["a", "b", "c"], CopyOutLimits(max_patterns=2))


# --------------------------------------------------------------------------- copy_out: hostile


def test_symlink_to_canary_refused(workdir, host, opener):
    (workdir / "secret").symlink_to(host / "secret")
    (workdir / "dir").symlink_to(host)
    for patterns in (["secret"], ["*"], ["**"], ["secret", "dir"]):
        results = copy_out(str(workdir), patterns)
        no_secret(results)
        got = by_path(results)
        assert got["secret"].refused == "symlink" and got["secret"].data is None
    host_unchanged(host)


def test_symlink_in_parent_component_refused(workdir, host, opener):
    (workdir / "out").symlink_to(host)
    for patterns in (["out/*"], ["out/secret"], ["**/secret"], ["*/*"]):
        results = copy_out(str(workdir), patterns)
        no_secret(results)
        assert results == [FileOut("out", None, 0, "symlink")], patterns
    host_unchanged(host)


def test_fifo_refused_without_blocking(workdir, opener):
    os.mkfifo(workdir / "fifo")
    (workdir / "ok").write_bytes(b"fine")
    results, elapsed = timed(copy_out, str(workdir), ["*"], timeout=5)
    assert by_path(results)["fifo"] == FileOut("fifo", None, 0, "not a regular file: fifo")
    assert by_path(results)["ok"].data == b"fine"
    assert elapsed < 1


def test_fifo_swapped_in_after_lstat_does_not_block(workdir, opener):
    """If a FIFO replaced a file between lstat and open, the O_NONBLOCK open + fstat catch it."""
    (workdir / "f").write_bytes(b"x")
    st = os.stat(workdir / "f")
    os.unlink(workdir / "f")
    os.mkfifo(workdir / "f")
    root = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        copier = files._CopyOut(root, st.st_dev, files._Matcher(["f"]), CopyOutLimits())
        _, elapsed = timed(copier.read, root, "f", st, ["f"], timeout=5)
    finally:
        os.close(root)
    assert copier.results == [FileOut("f", None, 0, "changed while copying")]
    assert elapsed < 1


def test_hard_link_to_canary_refused(workdir, host, opener):
    os.link(host / "secret", workdir / "linked")
    results = copy_out(str(workdir), ["*"])
    no_secret(results)
    assert results == [FileOut("linked", None, len(SECRET), "hard link")]
    host_unchanged(host)


def test_sparse_huge_file_refused_without_reading(workdir, opener):
    subprocess.run(["truncate", "-s", "1G", str(workdir / "huge")], check=True)
    (workdir / "small").write_bytes(b"s")
    results, elapsed = timed(copy_out, str(workdir), ["*"], timeout=5)
    got = by_path(results)
    assert got["huge"] == FileOut("huge", None, 1 << 30, "too large")
    assert got["small"].data == b"s"
    assert elapsed < 0.5, elapsed


def test_file_that_grew_after_stat_is_refused(workdir, opener):
    (workdir / "f").write_bytes(b"a" * 100)
    real = os.stat(workdir / "f")
    fields = list(real)
    fields[stat.ST_SIZE] = 10  # what lstat saw before the file "grew"
    seen = os.stat_result(fields)
    limits = CopyOutLimits(max_file_bytes=50)
    root = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        copier = files._CopyOut(root, real.st_dev, files._Matcher(["f"]), limits)
        copier.take(root, "f", seen, ["f"])
    finally:
        os.close(root)
    assert copier.results == [FileOut("f", None, 51, "too large")]  # read stopped at max + 1


def test_ten_thousand_files_bounded(workdir, opener):
    for i in range(10_000):
        fd = os.open(workdir / f"f{i:05d}", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"%d" % i)
        os.close(fd)
    results, elapsed = timed(copy_out, str(workdir), ["*"], timeout=10)
    ok = [r for r in results if r.refused is None]
    refused = [r for r in results if r.refused is not None]
    assert len(ok) == 64
    assert [r.data for r in ok] == [b"%d" % i for i in range(64)]
    assert {r.refused for r in refused} == {"limit: max_files"}
    assert len(refused) == 10_000 - 64
    assert elapsed < 2, elapsed
    # one more entry than max_scanned_entries: the walk stops and says where
    (workdir / "one-more").write_bytes(b"x")
    results, elapsed = timed(copy_out, str(workdir), ["*"], timeout=10)
    assert results[-1] == FileOut(".", None, 0, "limit: max_scanned_entries")
    assert len(results) == 10_001 and elapsed < 2  # the 10 000 entries read, then the stop
    assert sum(r.refused is None for r in results) == 64
    # a literal name is looked up, not scanned for: junk cannot hide it
    assert [r.path for r in copy_out(str(workdir), ["one-more"])] == ["one-more"]


def test_scan_limit_smaller(workdir, opener):
    for i in range(5):
        (workdir / f"d{i}").mkdir()
        for j in range(10):
            (workdir / f"d{i}" / f"f{j}").write_bytes(b"x")
    results = copy_out(str(workdir), ["**"], CopyOutLimits(max_scanned_entries=30))
    # 5 in the top directory + 10 in d0 + 10 in d1 + the first 5 read of d2: then the walk stops
    paths = [r.path for r in results]
    assert paths[:20] == [f"d{i}/f{j}" for i in range(2) for j in range(10)]
    assert len(paths[20:25]) == 5 and all(p.startswith("d2/f") for p in paths[20:25])
    assert results[25:] == [FileOut("d2", None, 0, "limit: max_scanned_entries")]
    assert all(r.refused is None for r in results[:25])


def test_total_bytes_limit_stops(workdir, opener):
    for name in ("a", "b", "c", "d"):
        (workdir / name).write_bytes(name.encode() * 40)
    results = copy_out(str(workdir), ["*"], CopyOutLimits(max_total_bytes=100))
    assert [(r.path, r.refused) for r in results] == [
        ("a", None), ("b", None), ("c", "limit: max_total_bytes"), ("d", "limit: max_total_bytes")]
    assert sum(r.size for r in results if r.data is not None) <= 100


def test_deep_tree_bounded(workdir, opener):
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(100):
        os.mkdir("d", dir_fd=fd)
        new = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = new
    leaf = os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(leaf, b"bottom")
    os.close(leaf)
    os.close(fd)
    (workdir / "d" / "shallow.txt").write_bytes(b"shallow")
    fds_before = len(os.listdir("/proc/self/fd"))
    results, elapsed = timed(copy_out, str(workdir), ["**"], timeout=5)
    assert len(os.listdir("/proc/self/fd")) == fds_before  # nothing leaked
    assert results == [FileOut("/".join(["d"] * 16), None, 0, "limit: max_depth"),
                       FileOut("d/shallow.txt", b"shallow", 7, None)]
    assert elapsed < 1
    results = copy_out(str(workdir), ["**/bottom.txt"], CopyOutLimits(max_depth=200))
    assert results == [FileOut("/".join(["d"] * 100 + ["bottom.txt"]), b"bottom", 6, None)]


def test_non_utf8_and_control_names(workdir, opener):
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for raw in (b"bad\xff.txt", b"new\nline.txt", b"ok\xc3\xa9.txt"):
            f = os.open(raw, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(f, b"data")
            os.close(f)
    finally:
        os.close(fd)
    results = copy_out(str(workdir), ["*"])
    got = by_path(results)
    assert got["bad\\xff.txt"] == FileOut("bad\\xff.txt", None, 4, "name is not UTF-8")
    assert got["new\\nline.txt"] == FileOut("new\\nline.txt", None, 4, "name has control characters")
    assert got["oké.txt"].data == b"data"
    for r in results:
        r.path.encode("utf-8")  # always valid text, one line
        assert r.path.isprintable()


def test_directory_matched_is_refused(workdir, opener):
    (workdir / "dir").mkdir()
    (workdir / "dir" / "f").write_bytes(b"f")
    assert copy_out(str(workdir), ["*"]) == [FileOut("dir", None, 0, "not a regular file: directory")]
    assert copy_out(str(workdir), ["dir"]) == [FileOut("dir", None, 0, "not a regular file: directory")]
    assert copy_out(str(workdir), ["dir/*"]) == [FileOut("dir/f", b"f", 1, None)]


def test_socket_refused(workdir, opener, monkeypatch):
    monkeypatch.chdir(workdir)  # AF_UNIX paths are short: bind relative to the work directory
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("sock")
        sock.listen(1)
        results, elapsed = timed(copy_out, str(workdir), ["sock"], timeout=5)
    finally:
        sock.close()
    assert results == [FileOut("sock", None, 0, "not a regular file: socket")]


@pytest.mark.skipif(not IS_ROOT, reason="mknod needs root")
def test_device_nodes_refused_without_opening(workdir, opener):
    try:
        os.mknod(workdir / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero: endless
        os.mknod(workdir / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    except PermissionError:
        host_lacks("no CAP_MKNOD here")
    results, elapsed = timed(copy_out, str(workdir), ["*"], timeout=5)
    assert results == [FileOut("blk", None, 0, "not a regular file: block device"),
                       FileOut("zero", None, 0, "not a regular file: character device")]
    assert elapsed < 1


def test_mode_000_file(workdir, opener):
    (workdir / "locked").write_bytes(b"locked data")
    os.chmod(workdir / "locked", 0)
    results = copy_out(str(workdir), ["locked"])
    if IS_ROOT:
        # root has CAP_DAC_OVERRIDE: a mode-000 file in the work directory is still readable,
        # and that is fine: the job wrote it itself.
        assert results == [FileOut("locked", b"locked data", 11, None)]
    else:  # pragma: no cover - this suite runs as root
        assert results[0].refused.startswith("unreadable")


@pytest.mark.skipif(not IS_ROOT, reason="needs root to switch to uid 65534")
def test_mode_000_file_and_dir_as_unprivileged_service(shared_tmp):
    work = shared_tmp / "work"
    work.mkdir(mode=0o755)
    (work / "locked").write_bytes(b"locked")
    (work / "closed").mkdir()
    (work / "closed" / "inside").write_bytes(b"inside")
    (work / "open").write_bytes(b"open")
    for p in (work, work / "locked", work / "closed", work / "closed" / "inside", work / "open"):
        os.chown(p, NOBODY, NOBODY)
    os.chmod(work / "locked", 0)
    os.chmod(work / "closed", 0)
    results = as_nobody(copy_out, str(work), ["*", "closed/*"])
    assert results == [
        FileOut("closed", None, 0, "unreadable directory: Permission denied"),
        FileOut("locked", None, 6, "unreadable: Permission denied"),
        FileOut("open", b"open", 4, None),
    ]


@pytest.mark.skipif(not IS_ROOT, reason="mount needs root")
def test_mount_point_inside_workdir_is_not_crossed(workdir, opener):
    """Not something a job can do on the host, but the walk must not cross into another fs."""
    m = workdir / "m"
    m.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "none", str(m)], capture_output=True).returncode != 0:
        host_lacks("cannot mount here")
    try:
        (m / "f").write_bytes(b"other fs")
        assert copy_out(str(workdir), ["**"]) == [
            FileOut("m", None, 0, "unreadable directory: on another file system")]
        with pytest.raises(OSError, match="on another file system"):
            remove_workdir(str(workdir))
        assert (m / "f").read_bytes() == b"other fs"
    finally:
        subprocess.run(["umount", "-l", str(m)], check=True)


# --------------------------------------------------------------------------- remove_workdir


def test_shutil_rmtree_is_fd_based_here():
    # documented in the module: the stdlib version is symlink-safe on this platform too
    assert shutil.rmtree.avoids_symlink_attacks


def test_remove_with_symlinks_to_canary(workdir, host, opener):
    (workdir / "dir").symlink_to(host)
    (workdir / "file").symlink_to(host / "secret")
    (workdir / "sub").mkdir()
    (workdir / "sub" / "up").symlink_to("../../host")
    os.link(host / "secret", workdir / "sub" / "hardlink")
    remove_workdir(str(workdir))
    assert not os.path.lexists(workdir)
    host_unchanged(host)
    assert os.stat(host / "secret").st_nlink == 1
    remove_workdir(str(workdir))  # already gone: fine


def test_remove_symlinked_workdir_removes_only_the_link(tmp_path, host):
    link = tmp_path / "work"
    link.symlink_to(host)
    remove_workdir(str(link))
    assert not os.path.lexists(link)
    host_unchanged(host)


def test_remove_with_mode_000_dirs(workdir, opener):
    (workdir / "a/b/c").mkdir(parents=True)
    (workdir / "a/b/c/f").write_bytes(b"x")
    (workdir / "a/b/f").write_bytes(b"x")
    for d in ("a/b/c", "a/b", "a"):
        os.chmod(workdir / d, 0)
    os.chmod(workdir, 0o500)
    remove_workdir(str(workdir))
    assert not os.path.lexists(workdir)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to switch to uid 65534")
def test_remove_mode_000_dirs_as_unprivileged_service(shared_tmp):
    work = shared_tmp / "work"
    (work / "a/b/c").mkdir(parents=True)
    (work / "a/b/c/f").write_bytes(b"x")
    (work / "a/ro").mkdir()
    (work / "a/ro/f").write_bytes(b"x")
    os.mkfifo(work / "fifo")
    for root, dirs, names in os.walk(work):
        for n in [root] + [os.path.join(root, x) for x in dirs + names]:
            os.chown(n, NOBODY, NOBODY, follow_symlinks=False)
    os.chmod(work / "a/ro", 0o500)
    for d in ("a/b/c", "a/b", "a", ""):
        os.chmod(work / d, 0)
    os.chmod(shared_tmp, 0o777)  # the service owns the directory that holds work directories
    as_nobody(remove_workdir, str(work))
    assert not os.path.lexists(work)


def test_remove_ten_thousand_files(workdir, opener):
    for i in range(10_000):
        os.close(os.open(workdir / f"f{i:05d}", os.O_WRONLY | os.O_CREAT, 0o644))
    for i in range(300):  # and more subdirectories than one sweep remembers
        os.mkdir(workdir / f"d{i:03d}")
    _, elapsed = timed(remove_workdir, str(workdir), timeout=10)
    assert not os.path.lexists(workdir)
    assert elapsed < 2, elapsed


def test_remove_tree_deeper_than_recursion_limit(workdir, opener):
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(3000):
        os.mkdir("d", dir_fd=fd)
        if i % 500 == 0:
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        new = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = new
    os.close(fd)
    fds_before = len(os.listdir("/proc/self/fd"))
    _, elapsed = timed(remove_workdir, str(workdir), timeout=20)
    assert not os.path.lexists(workdir)
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert elapsed < 5, elapsed
