"""Prometheus metrics (`GET /metrics`): one registry per server, passed to whoever counts.

Buckets are chosen around the targets: acks and deliveries are expected well
under 5 ms, commits and WAL syncs well under 1 ms, batches up to 2,048 writes.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from parley.services.push import PushStats

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("parley_connections", "Open WebSocket connections", registry=r)
        self.messages_in = Counter(
            "parley_messages_in", "Messages stored (new, not resends)", registry=r
        )
        self.events_out = Counter(
            "parley_events_out", "Events queued to client connections", registry=r
        )
        self.ack_latency = Histogram(
            "parley_ack_latency_seconds",
            "Send received to ack queued (includes the durable commit)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_latency = Histogram(
            "parley_delivery_latency_seconds",
            "Send received to the message event published to the recipients",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "parley_storage_batch_size", "Writes per commit", buckets=_BATCH_BUCKETS, registry=r
        )
        self.commit_seconds = Histogram(
            "parley_storage_commit_seconds",
            "Time to run and commit one batch (without the sync that makes it durable)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "parley_storage_queue_wait_seconds",
            "Longest wait of a write in each batch before the writer took it up:"
            " where a stalled writer (a checkpoint, a slow commit) shows first",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.sync_seconds = Histogram(
            "parley_storage_sync_seconds",
            "One fdatasync of the WAL, covering every batch committed before it",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_queue = Gauge(
            "parley_storage_queued_writes", "Writes waiting for the writer", registry=r
        )
        self.event_log_lag = Histogram(
            "parley_event_log_lag_seconds",
            "WAL synced to the batch's events published (time between syncer and loop)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "parley_errors", "Errors answered to clients, by code", ["code"], registry=r
        )
        # Collections by generation: the collector's pauses land on the event loop.
        GCCollector(registry=r)
        Gauge(
            "parley_gc_frozen_objects",
            "Objects from startup that collections no longer walk (gc.freeze)",
            registry=r,
        ).set_function(gc.get_freeze_count)

    def track_presence(self, announcements: Callable[[], int], events: Callable[[], int]) -> None:
        """Status changes announced, and presence events sent for them: their
        ratio is the fan-out per change (the online part of the audience)."""
        Gauge(
            "parley_presence_announcements",
            "Presence status changes announced",
            registry=self.registry,
        ).set_function(announcements)
        Gauge(
            "parley_presence_events",
            "Presence events sent to connected watchers",
            registry=self.registry,
        ).set_function(events)

    def track_cache(
        self, hits: Callable[[], int], misses: Callable[[], int], size: Callable[[], int]
    ) -> None:
        """Reads of a conversation (membership, objects, history) answered from
        memory and from disk, and how many conversations memory holds."""
        for name, doc, fn in (
            ("parley_cache_hits", "Conversation reads answered from memory", hits),
            ("parley_cache_misses", "Conversation reads that went to disk", misses),
            ("parley_cache_conversations", "Conversations held in memory", size),
        ):
            Gauge(name, doc, registry=self.registry).set_function(fn)

    def track_push(self, stats: PushStats) -> None:
        """Web Push notifications by outcome: enqueued, coalesced into one
        already pending, sent, retried, failed, removed (subscription gone),
        dropped (queue full)."""
        gauge = Gauge(
            "parley_push_notifications",
            "Push notifications by outcome",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in dataclasses.fields(stats):
            gauge.labels(outcome.name).set_function(partial(getattr, stats, outcome.name))

    def track_connections(self, count: Callable[[], int]) -> None:
        self.connections.set_function(count)

    def track_write_queue(self, count: Callable[[], int]) -> None:
        self.write_queue.set_function(count)

    def track_unwritten_entries(self, count: Callable[[], int]) -> None:
        """Event-log entries durable in the journal, not yet in their table."""
        Gauge(
            "parley_storage_log_entries_unwritten",
            "Event-log entries journaled and not yet written to users' logs",
            registry=self.registry,
        ).set_function(count)

    def observe_commit(self, batch: int, seconds: float, waited: float) -> None:
        """Called on the writer thread (prometheus_client is thread-safe)."""
        self.batch_size.observe(batch)
        self.commit_seconds.observe(seconds)
        self.queue_wait.observe(waited)

    def render(self) -> bytes:
        return generate_latest(self.registry)
