"""The durable, chained, append-only writer of the audit log.

    writer = AuditWriter("/var/lib/sandboxd/audit", hmac_key=key)   # durability="group"
    written = writer.append({"event": "job_finished", ...})        # on disk when it returns
    written = await writer.append_async({...})                       # the same, from asyncio
    writer.close()

Files in the directory: ``audit-000001.jsonl``, ``audit-000002.jsonl``… (segments, opened
with O_APPEND), ``head.json`` (the last durable seq/hash, replaced atomically by rename at
open, at each rotation and at close) and ``.lock`` (flock: one writer per directory).

Durability: every ``append`` returns only after an fdatasync that covers its record.
``durability="fsync"`` does one write+fdatasync per record under a lock; ``"group"`` (the
default) hands records to one writer thread that writes everything queued in one write()
and covers it with one fdatasync, so concurrent appenders share the cost: records that arrive
while an fdatasync runs go into the next batch, so a record waits at most for the batch in
flight and its own. With ``max_delay`` > 0 (default 0: measured not to pay, docs/audit.md) the
thread also lingers up to that long for more records when the previous batch had several.

Opening a directory whose last segment ends in a torn line (a crash mid-write) truncates
the torn bytes and appends a ``seal`` record naming their offset, length and SHA-256; the
chain goes on from the last complete record. See docs/audit.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import hashlib
import json
import os
import threading
import time
from typing import Any, Mapping

from sandboxd.audit.chain import (FORMAT_VERSION, GENESIS, HEAD_NAME, LOCK_NAME, AuditError, canonical,
                                  fsync_dir, head_mac, list_segments, normalized, now_iso, record_hash,
                                  record_mac, segment_name)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_DELAY = 0.0  # measured: lingering did not pay (docs/audit.md)
DURABILITY_MODES = ("group", "fsync")
RESERVED = ("seq", "prev", "hash", "mac", "v")


def read_tail(fd: int, size: int) -> tuple[int, bytes | None]:
    """(offset just past the last newline, the last complete line or None) of a file."""
    buf, pos = b"", size
    while pos > 0:
        step = min(65536, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        nl = buf.rfind(b"\n")
        if nl == -1:
            continue
        start = buf.rfind(b"\n", 0, nl)
        if start != -1:
            return pos + nl + 1, buf[start + 1:nl + 1]
        if pos == 0:
            return nl + 1, buf[:nl + 1]
    return 0, None  # no newline at all


def _check_tail_record(line: bytes, where: str, key: bytes | None) -> dict[str, Any]:
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError("not an object")
    except ValueError:
        raise AuditError(f"{where}: the last record is not valid JSON; refusing to continue the chain "
                         "(run `sandboxd audit verify`)") from None
    if record.get("hash") != record_hash(record):
        raise AuditError(f"{where}: the last record (seq {record.get('seq')}) fails its hash; refusing to "
                         "continue the chain (run `sandboxd audit verify`)")
    if key is not None and record.get("mac") != record_mac(record, key):
        raise AuditError(f"{where}: the last record (seq {record.get('seq')}) fails its mac; refusing to "
                         "continue the chain (wrong key, or tampering)")
    return record


class AuditWriter:
    """Appends records to the chained log in ``directory``; thread-safe, asyncio-friendly."""

    def __init__(self, directory: str, *, durability: str = "group", max_delay: float = DEFAULT_MAX_DELAY,
                 max_batch: int = 1024, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 hmac_key: bytes | None = None) -> None:
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {DURABILITY_MODES}, not {durability!r}")
        self.directory = os.path.abspath(directory)
        self.durability = durability
        self.max_delay = max_delay
        self.max_batch = max(1, max_batch)
        self.segment_bytes = segment_bytes
        self._key = hmac_key
        self._lock = threading.Lock()  # fsync mode: one commit at a time; close()
        self._head_lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue: list[tuple[dict[str, Any], concurrent.futures.Future]] = []
        self._closing = False
        self._closed = False
        self._failed: BaseException | None = None
        self._last_batch = 0
        self._fd = -1
        self.sealed: dict[str, Any] | None = None  # the seal record written at open, if any
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise AuditError(f"{self.directory}: the audit log is open for writing by another process") from None
        try:
            self._open_tail()
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
            os.close(self._lock_fd)
            raise
        self._thread: threading.Thread | None = None
        if durability == "group":
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    # -- state ---------------------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        """The seq of the last record known to be on disk."""
        return self._durable[1]

    @property
    def last_hash(self) -> str:
        return self._durable[2]

    @property
    def segment(self) -> int:
        return self._durable[0]

    # -- opening: find the tail, seal a torn line ---------------------------------------
    def _open_tail(self) -> None:
        segments = list_segments(self.directory)
        head = self._read_head()
        if not segments:
            if head is not None:
                raise AuditError(f"{self.directory}: {HEAD_NAME} names seq {head.get('seq')} but there is no "
                                 "segment: the log was removed; refusing to start a new chain over it")
            self._seq, self._hash, self._segment = 0, GENESIS, 0
            self._durable = (0, 0, GENESIS)
            self._new_segment(1)
            self.write_head()
            return
        number, path = segments[-1]
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            good_end, last_line = read_tail(fd, size)
            torn = b""
            if good_end < size:
                torn = os.pread(fd, size - good_end, good_end)
        finally:
            os.close(fd)
        if last_line is not None:
            last = _check_tail_record(last_line, os.path.basename(path), self._key)
            seq, prev = int(last["seq"]), last["hash"]
        elif number > 1:
            seq, prev = self._last_of_segment(number - 1)
        else:
            seq, prev = 0, GENESIS
        if head is not None:
            if int(head.get("seq", -1)) > seq:
                raise AuditError(f"{self.directory}: {HEAD_NAME} names seq {head.get('seq')} but the log ends at "
                                 f"seq {seq}: records or segments were removed; refusing to continue")
            if int(head.get("seq", -1)) == seq and head.get("hash") != prev:
                raise AuditError(f"{self.directory}: {HEAD_NAME} and the last record (seq {seq}) disagree "
                                 "on its hash; refusing to continue")
        self._seq, self._hash, self._segment = seq, prev, number
        self._durable = (number, seq, prev)
        if torn:
            # A crash cut the last write short: keep its length and digest in the chain, drop the bytes.
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, good_end)
                os.fsync(fd)
            finally:
                os.close(fd)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._size = good_end
        self._segment_records = 0 if last_line is None else 2  # "more than a header": may rotate
        lines = []
        if last_line is None:
            lines.append(self._chain(self._header(number))[1])
            self._segment_records = 1
        if torn:
            seal = {"event": "seal", "segment": number, "torn_offset": good_end, "torn_bytes": len(torn),
                    "torn_sha256": hashlib.sha256(torn).hexdigest(), "time": now_iso()}
            written, line = self._chain(seal)
            lines.append(line)
            self.sealed = written
        if lines:
            self._write_all(b"".join(lines))
            os.fdatasync(self._fd)
            self._durable = (self._segment, self._seq, self._hash)
        self.write_head()

    def _last_of_segment(self, number: int) -> tuple[int, str]:
        path = os.path.join(self.directory, segment_name(number))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise AuditError(f"{self.directory}: segment {number} is missing; refusing to continue") from None
        try:
            good_end, line = read_tail(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        if line is None:
            raise AuditError(f"{path}: no complete record; refusing to continue")
        record = _check_tail_record(line, os.path.basename(path), self._key)
        return int(record["seq"]), record["hash"]

    def _read_head(self) -> dict[str, Any] | None:
        path = os.path.join(self.directory, HEAD_NAME)
        try:
            with open(path, "rb") as handle:
                head = json.loads(handle.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise AuditError(f"{path}: unreadable ({exc}); refusing to continue") from None
        if self._key is not None and head.get("mac") != head_mac(head, self._key):
            raise AuditError(f"{path}: mac mismatch; refusing to continue")
        return head

    # -- records and segments ------------------------------------------------------------
    def _header(self, number: int) -> dict[str, Any]:
        return {"event": "segment_opened", "segment": number, "time": now_iso(),
                "previous_segment": number - 1 if number > 1 else None}

    def _chain(self, record: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """Give a prepared record its place in the chain; the caller writes the line."""
        self._seq += 1
        record["v"] = FORMAT_VERSION
        record["seq"] = self._seq
        record["prev"] = self._hash
        digest = record_hash(record)
        record["hash"] = digest
        if self._key is not None:
            record["mac"] = record_mac(record, self._key)
        self._hash = digest
        return record, canonical(record) + b"\n"

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)

    def _new_segment(self, number: int) -> None:
        path = os.path.join(self.directory, segment_name(number))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)
        self._segment, self._size, self._segment_records = number, 0, 1
        self._write_all(self._chain(self._header(number))[1])
        os.fdatasync(fd)
        fsync_dir(self.directory)
        self._durable = (self._segment, self._seq, self._hash)

    def _commit(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Chain, write and fdatasync ``records``; rotate when the segment is full."""
        written, pending = [], []
        pending_len = 0
        for record in records:
            if self._segment_records > 1 and self._size + pending_len >= self.segment_bytes:
                if pending:
                    self._write_all(b"".join(pending))
                    os.fdatasync(self._fd)
                    pending, pending_len = [], 0
                self._durable = (self._segment, self._seq, self._hash)
                self._new_segment(self._segment + 1)
                self.write_head()
            record, line = self._chain(record)
            pending.append(line)
            pending_len += len(line)
            self._segment_records += 1
            written.append(record)
        if pending:
            self._write_all(b"".join(pending))
            os.fdatasync(self._fd)
        self._durable = (self._segment, self._seq, self._hash)
        return written

    def write_head(self) -> None:
        """Replace ``head.json`` (tmp file, fsync, rename, fsync dir) with the last durable record."""
        number, seq, digest = self._durable
        head = {"v": FORMAT_VERSION, "segment": number, "seq": seq, "hash": digest, "time": now_iso()}
        if self._key is not None:
            head["mac"] = head_mac(head, self._key)
        with self._head_lock:
            tmp = os.path.join(self.directory, f".{HEAD_NAME}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, canonical(head) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, os.path.join(self.directory, HEAD_NAME))
            fsync_dir(self.directory)

    # -- the public API ------------------------------------------------------------------
    def _prepare(self, record: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(record, Mapping) or not isinstance(record.get("event"), str):
            raise ValueError("an audit record is a mapping with a string 'event'")
        clash = [k for k in RESERVED if k in record]
        if clash:
            raise ValueError(f"the writer sets {', '.join(clash)} itself")
        prepared = normalized(record)
        prepared.setdefault("time", now_iso())
        return prepared

    def _usable(self) -> None:
        if self._closing or self._closed:
            raise AuditError("the audit log is closed")
        if self._failed is not None:
            raise AuditError(f"the audit log failed earlier and accepts nothing more: {self._failed}")

    def submit(self, record: Mapping[str, Any]) -> concurrent.futures.Future:
        """Queue ``record``; the future's result is the record as written, set after its fdatasync."""
        prepared = self._prepare(record)
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.durability == "fsync":
            with self._lock:
                self._usable()
                try:
                    future.set_result(self._commit([prepared])[0])
                except BaseException as exc:  # the file's state is unknown now: stop here
                    self._failed = exc
                    future.set_exception(AuditError(f"audit write failed: {exc}"))
            return future
        with self._cond:
            self._usable()
            self._queue.append((prepared, future))
            self._cond.notify()
        return future

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``record``; returns it as written (``seq``, ``prev``, ``hash``…) once it is on disk."""
        return self.submit(record).result()

    async def append_async(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """``append`` for asyncio: the event loop is never blocked by a write or an fsync.

        A cancelled caller does not take its record back: it may still be written.
        """
        if self.durability == "group":
            return await asyncio.wrap_future(self.submit(record))
        return await asyncio.get_running_loop().run_in_executor(None, self.append, record)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                if self.max_delay > 0 and self._last_batch > 1 and not self._closing:
                    # Others were appending a moment ago: give them up to max_delay to join.
                    deadline = time.monotonic() + self.max_delay
                    while len(self._queue) < min(self._last_batch, self.max_batch) and not self._closing:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                batch = self._queue[:self.max_batch]
                del self._queue[:self.max_batch]
            self._last_batch = len(batch)
            if self._failed is not None:
                for _, future in batch:
                    future.set_exception(AuditError(f"the audit log failed earlier: {self._failed}"))
                continue
            try:
                written = self._commit([record for record, _ in batch])
            except BaseException as exc:  # the file's state is unknown now: fail this and all later
                self._failed = exc
                for _, future in batch:
                    future.set_exception(AuditError(f"audit write failed: {exc}"))
                continue
            for (_, future), record in zip(batch, written):
                future.set_result(record)

    def close(self) -> None:
        """Write what is queued, then ``head.json``; release the directory."""
        with self._cond:
            if self._closing or self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            try:
                if self._failed is None:
                    self.write_head()
            finally:
                self._closed = True
                os.close(self._fd)
                os.close(self._lock_fd)

    def __enter__(self) -> "AuditWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
