"""Running one API request as a job: work directory, files in, stdin, captured output,
the spawner, files out, cleanup — the same JobWatch logic the CLI uses, driven by asyncio."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxd.jail.plan import JailTemplate, JobLimits, JobSpec
from sandboxd.policy.compile import compile_template
from sandboxd.policy.load import LoadedPolicy, find_policy, load_policy
from sandboxd.service import files as job_files
from sandboxd.service.config import ServiceConfig
from sandboxd.service.events import EventHub
from sandboxd.service.schemas import RunRequest
from sandboxd.spawner.async_client import AsyncSpawner
from sandboxd.supervise.output import CappedStream, pipe_for
from sandboxd.supervise.runner import JobWatch


@dataclass
class CachedPolicy:
    mtime_ns: int
    loaded: LoadedPolicy
    template: JailTemplate


class PolicyCache:
    """Compiled policies, compiled once and again only when their file changes."""

    def __init__(self) -> None:
        self._cache: dict[str, CachedPolicy] = {}

    def get(self, name: str) -> CachedPolicy:
        path = find_policy(name)
        mtime = path.stat().st_mtime_ns
        cached = self._cache.get(name)
        if cached is None or cached.mtime_ns != mtime:
            loaded = load_policy(name)
            cached = CachedPolicy(mtime, loaded, compile_template(loaded))
            self._cache[name] = cached
        return cached


async def _remove_workdir(workdir: Path) -> None:
    """The job's work directory, gone. Most jobs leave it empty: one rmdir here does it;
    anything else is walked off the loop by ``remove_workdir``."""
    try:
        os.rmdir(workdir)
        return
    except OSError:
        pass  # not empty (or not there, or not a plain directory): the careful way decides
    await asyncio.to_thread(job_files.remove_workdir, str(workdir))


class Executor:
    def __init__(self, config: ServiceConfig, spawner: AsyncSpawner, hub: EventHub,
                 policies: PolicyCache) -> None:
        self.config = config
        self.spawner = spawner
        self.hub = hub
        self.policies = policies
        self.work_root = Path(config.state_dir) / "work"
        self.work_root.mkdir(parents=True, exist_ok=True)

    def limits_for(self, template: JailTemplate, request: RunRequest) -> JobLimits:
        asked = request.limits
        limits = template.limits.narrowed(JobLimits(
            cpu_time=asked.cpu_time, wall_time=asked.wall_time, memory=asked.memory, pids=asked.pids,
            cpus=asked.cpus, output=asked.output, fsize=asked.file_size))
        # The service holds output in memory and a slot in time: both are always bounded.
        return JobLimits(**{**limits.__dict__,
                            "wall_time": limits.wall_time or self.config.default_wall_time_s,
                            "output": limits.output if limits.output is not None else self.config.default_output_bytes})

    async def execute(self, run_id: str, request: RunRequest) -> dict[str, Any]:
        cached = self.policies.get(request.policy)
        template = cached.template
        limits = self.limits_for(template, request)
        workdir = self.work_root / run_id
        if request.files:
            await asyncio.to_thread(self._prepare_workdir, workdir, request)
        else:  # one mkdir: cheaper here than a hop to a thread and back
            workdir.mkdir(mode=0o755)
        try:
            job = JobSpec(job_id=run_id, argv=tuple(request.argv), env=tuple(request.env.items()),
                          workdir=str(workdir), limits=limits)
            watch = await self._run(template, job, request.stdin_bytes())
            try:
                result = watch.result().to_dict()
            finally:
                watch.close()  # the pidfd and the pipes; what was read stays in the streams
            copied = []
            if request.copy_out:
                copied = await asyncio.to_thread(self._copy_out, workdir, request.copy_out)
        finally:
            await _remove_workdir(workdir)
        out, err = watch.streams
        encode = (lambda data: base64.b64encode(data).decode()) if request.output_encoding == "base64" \
            else (lambda data: data.decode("utf-8", errors="replace"))
        result.update(id=run_id, status="finished", limits={k: v for k, v in limits.__dict__.items()}, stdout=encode(bytes(out.kept)), stderr=encode(bytes(err.kept)),
                      stdout_truncated=out.truncated, stderr_truncated=err.truncated,
                      output_encoding=request.output_encoding,
                      files=[{"path": f.path, "size": f.size, "refused": f.refused,
                              "content_base64": None if f.data is None else base64.b64encode(f.data).decode()}
                             for f in copied])
        return result

    def _prepare_workdir(self, workdir: Path, request: RunRequest) -> None:
        workdir.mkdir(mode=0o755)
        total = 0
        placed = []
        for index, item in enumerate(request.files):
            data = item.data()
            total += len(data)
            if len(data) > self.config.max_file_bytes or total > self.config.max_files_total_bytes:
                shutil.rmtree(workdir, ignore_errors=True)
                raise job_files.FileError(f"files[{index}].content: larger than the service allows")
            name = job_files.validate_name(item.path, field=f"files[{index}].path")
            placed.append(job_files.FileIn(name, data, item.executable))
        try:
            job_files.place_files(str(workdir), placed)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    def _copy_out(self, workdir: Path, patterns: list[str]) -> list[job_files.FileOut]:
        limits = job_files.CopyOutLimits(max_file_bytes=self.config.max_file_bytes,
                                         max_total_bytes=self.config.max_files_total_bytes)
        return job_files.copy_out(str(workdir), patterns, limits)

    async def _run(self, template: JailTemplate, job: JobSpec, stdin: bytes) -> JobWatch:
        loop = asyncio.get_running_loop()
        stdin_fd = os.memfd_create("sandboxd-stdin", os.MFD_CLOEXEC)
        os.write(stdin_fd, stdin)
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        out, out_w = pipe_for("stdout", job.limits.output, None, keep=True)
        err, err_w = pipe_for("stderr", job.limits.output, None, keep=True)
        watch = JobWatch(template, job, [out, err])
        try:
            queue = await self.spawner.run(template, job, (stdin_fd, out_w, err_w))
        except BaseException:
            watch.close()
            raise
        finally:
            for fd in (stdin_fd, out_w, err_w):
                os.close(fd)
        readers = [stream.read_fd for stream in watch.streams]
        for stream in watch.streams:
            loop.add_reader(stream.read_fd, self._on_output, watch, stream, job.job_id)
        try:
            while not watch.done:
                try:
                    event = await queue.get()
                except asyncio.CancelledError:
                    # Cancelled (DELETE, client gone, shutdown): end the job, then finish
                    # normally so its cgroup, pipes and work directory are cleaned up.
                    watch.kill()
                    try:
                        await asyncio.shield(self._finish(queue, watch))
                    finally:
                        watch.close()  # else its pidfd and pipes stay open for good
                    raise
                watch.on_event(event)
                if event.kind == "started":
                    self.hub.publish(job.job_id, "started", {"id": job.job_id})
        except BaseException:
            watch.close()
            raise
        finally:
            for fd in readers:
                loop.remove_reader(fd)
            self.spawner.release(job.job_id)
        for stream in watch.streams:
            self._drain(watch, stream, job.job_id)
        return watch

    async def _finish(self, queue: asyncio.Queue, watch: JobWatch) -> None:
        """After a cancel: wait for the job's end, killing it as soon as it has a pidfd (a
        cancel that came before the ``started`` event could not kill it yet)."""
        while not watch.done:
            event = await queue.get()
            watch.on_event(event)
            if event.kind == "started":
                watch.kill()

    def _on_output(self, watch: JobWatch, stream: CappedStream, run_id: str) -> None:
        before = stream.total
        watch.on_output(stream)
        if stream.total > before:
            self.hub.output(run_id, stream.name, bytes(stream.kept[before:stream.total]))
        if stream.closed or stream.truncated:
            asyncio.get_running_loop().remove_reader(stream.read_fd)

    def _drain(self, watch: JobWatch, stream: CappedStream, run_id: str) -> None:
        before = stream.total
        for _ in range(1024):
            if stream.closed or stream.truncated:
                break
            stream.pump()
        if stream.total > before:
            self.hub.output(run_id, stream.name, bytes(stream.kept[before:stream.total]))
