"""Prometheus metrics (text format via the standard client library)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter("sandboxd_jobs_total", "Finished runs by verdict and tenant",
                            ["verdict", "tenant"], registry=self.registry)
        self.requests = Counter("sandboxd_http_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.rejections = Counter("sandboxd_rejections_total", "Requests refused before running, by reason",
                                  ["reason"], registry=self.registry)
        self.queued = Gauge("sandboxd_queue_depth", "Runs waiting for a slot", registry=self.registry)
        self.running = Gauge("sandboxd_running_jobs", "Runs holding a slot", registry=self.registry)
        self.duration = Histogram("sandboxd_job_duration_seconds", "Wall time of finished runs",
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
                                  registry=self.registry)
        self.queue_wait = Histogram("sandboxd_queue_wait_seconds", "Time runs waited for a slot",
                                    buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60),
                                    registry=self.registry)
        self.spawner_up = Gauge("sandboxd_spawner_up", "1 while the spawner process answers",
                                registry=self.registry)
        self.spawner_restarts = Counter("sandboxd_spawner_restarts_total", "Spawner processes started again",
                                        registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
