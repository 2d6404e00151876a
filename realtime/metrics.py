"""Prometheus metrics, one registry per application (never the global default registry).

Framework-free: sessions and jobs record into a :class:`Metrics` they are handed;
``ops`` serves ``registry`` at ``/metrics``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

# Buckets in seconds: per-frame stage times are milliseconds, latency tens to hundreds of ms.
_STAGE_BUCKETS = (0.001, 0.002, 0.004, 0.006, 0.008, 0.012, 0.016, 0.025, 0.04, 0.06, 0.1, 0.25)
_LATENCY_BUCKETS = (0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5, 1.0)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """All of the server's metrics, registered on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions_active = Gauge("avatar_sessions_active", "Live sessions now open", registry=r)
        self.sessions_total = Counter(
            "avatar_sessions_total", "Live sessions by outcome", ["outcome"], registry=r
        )
        self.jobs_active = Gauge("avatar_jobs_active", "Offline jobs queued or running", registry=r)
        self.jobs_total = Counter("avatar_jobs_total", "Offline jobs by final status", ["status"], registry=r)
        self.frames_sent = Counter("avatar_video_frames_sent_total", "Video frames sent", registry=r)
        self.frames_dropped = Counter(
            "avatar_video_frames_dropped_total", "Late frames replaced by a repeat", registry=r
        )
        self.audio_packets_dropped = Counter(
            "avatar_audio_packets_dropped_total",
            "Peer audio packets dropped: late (after a newer one) or undecodable; their 20 ms are silence",
            ["reason"],
            registry=r,
        )
        self.playout_delay_changes = Counter(
            "avatar_playout_delay_changes_total",
            "Adaptive playout delay steps: raised (frames came late) or lowered (early again)",
            ["direction"],
            registry=r,
        )
        self.session_fps = Histogram(
            "avatar_session_fps",
            "Delivered fps per session, sampled each second",
            buckets=(5, 10, 15, 20, 23, 24, 25, 26, 30, 35),
            registry=r,
        )
        self.audio_to_mouth_seconds = Histogram(
            "avatar_audio_to_mouth_seconds",
            "Audio sample in to its video frame out",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "avatar_model_seconds", "Motion model time per chunk", buckets=_STAGE_BUCKETS, registry=r
        )
        self.render_seconds = Histogram(
            "avatar_render_seconds", "Portrait render time per frame", buckets=_STAGE_BUCKETS, registry=r
        )
        self.encode_seconds = Histogram(
            "avatar_encode_seconds", "Video encode time per frame", buckets=_STAGE_BUCKETS, registry=r
        )
        self.http_rejected = Counter(
            "avatar_http_rejected_total", "Requests refused by a limit", ["reason"], registry=r
        )
        # Labels are bounded: route is the route template (or "unmatched"), method one of a fixed set.
        self.http_requests = Counter(
            "avatar_http_requests_total",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "avatar_http_request_seconds",
            "HTTP request handling time by route template",
            ["route"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "avatar_http_requests_in_flight", "HTTP requests being handled", registry=r
        )
        # Leak watch: fds, RSS and CPU (Linux /proc) plus live Python threads.
        ProcessCollector(registry=r)
        self.threads = Gauge("avatar_process_threads", "Live Python threads", registry=r)
        self.threads.set_function(threading.active_count)

    def exposition(self, extra: Iterable[Metric] = ()) -> bytes:
        """The text format that Prometheus scrapes, with ``extra`` families (the live workers') merged.

        A family that both define is written once, with the samples of both.
        """
        extra = list(extra)
        if not extra:
            return generate_latest(self.registry)
        merged: dict[str, Metric] = {}
        for fam in [*self.registry.collect(), *extra]:
            have = merged.get(fam.name)
            if have is None:
                merged[fam.name] = have = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            have.samples.extend(fam.samples)
        return generate_latest(_Families(list(merged.values())))


class _Families:
    """Already collected families, in the shape ``generate_latest`` reads (a ``collect`` method)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
