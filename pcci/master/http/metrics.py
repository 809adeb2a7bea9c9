"""
Prometheus metrics of a master, in the text format, for C{GET /metrics}.

Per-worker figures and the pool gauges are read from the master's state
at each scrape; counters and the job duration histogram are fed by the
dispatcher's end-of-job and end-of-pool hooks.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pcci.master.cluster.model import CANCELLED, NOT_STARTED, STATUS_LOST, TIMED_OUT, Job, Pool
from pcci.master.cluster.state import ClusterState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Worker figures exported as gauges: figure name, metric name, help.
WORKER_GAUGES = (
    ("cpu_ratio", "pcci_worker_cpu_usage_ratio", "CPU busy, all cores, 0 to 1"),
    ("memory_used_bytes", "pcci_worker_memory_used_bytes", "Memory in use"),
    ("memory_total_bytes", "pcci_worker_memory_total_bytes", "Memory installed"),
    ("disk_used_bytes", "pcci_worker_disk_used_bytes", "Disk space used on the reported filesystem"),
    ("disk_total_bytes", "pcci_worker_disk_total_bytes", "Disk size of the reported filesystem"),
    ("temperature_celsius", "pcci_worker_temperature_celsius", "Hottest temperature sensor"),
    ("uptime_seconds", "pcci_worker_uptime_seconds", "Seconds since the machine booted"),
    ("jobs_running", "pcci_worker_jobs_running", "Jobs running, as the worker counts them"),
)

#: Job duration buckets, seconds: from `true` to a long build.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


#: The outcomes of C{pcci_jobs_total}.
JOB_OUTCOMES = (
    "success", "failure", "signaled", "lost", "not_started", "timed_out", "cancelled",
)


def job_outcome(job: Job) -> str:
    status = job.status
    if status == 0:
        return "success"
    if status == STATUS_LOST:
        return "lost"
    if job.state in (TIMED_OUT, CANCELLED):
        return job.state
    if job.state == NOT_STARTED:
        return "not_started"
    if status is not None and status > 128:
        return "signaled"
    return "failure"


class _StateCollector(Collector):
    """Gauges read from the state at scrape time."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        up = GaugeMetricFamily("pcci_worker_up", "1 if the worker is connected", labels=["worker"])
        info = GaugeMetricFamily(
            "pcci_worker_info", "Worker facts as labels; always 1", labels=["worker", "address"]
        )
        seen = GaugeMetricFamily(
            "pcci_worker_last_seen_timestamp_seconds", "Last heartbeat, Unix time", labels=["worker"]
        )
        load = GaugeMetricFamily(
            "pcci_worker_load_average", "Load average", labels=["worker", "period"]
        )
        figures = {
            figure: GaugeMetricFamily(name, text, labels=["worker"])
            for figure, name, text in WORKER_GAUGES
        }
        for name, record in state.roster.records.items():
            up.add_metric([name], 1 if record.online else 0)
            info.add_metric([name, record.address], 1)
            seen.add_metric([name], record.last_seen)
            if record.figures is None:
                continue
            for period in ("1m", "5m", "15m"):
                value = record.figures[f"load_{period}"]
                if value is not None:
                    load.add_metric([name, period], value)
            for figure, family in figures.items():
                value = record.figures[figure]
                if value is not None:
                    family.add_metric([name], value)
        yield from (up, info, seen, load, *figures.values())
        pools = state.history.pools
        running = sum(1 for pool in pools.values() if pool.ended_at is None)
        yield GaugeMetricFamily("pcci_pools_running", "Pools with a job running", value=running)
        yield GaugeMetricFamily(
            "pcci_pools_retained", "Finished pools still kept", value=len(pools) - running
        )
        connected = sum(1 for link in state.roster.links.values() if link.master is None)
        yield GaugeMetricFamily(
            "pcci_workers_connected", "Workers connected to this master", value=connected
        )


class MasterMetrics:
    """The metrics of one master, in a registry of its own."""

    def __init__(self, state: ClusterState) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(state))
        self.pools = Counter(
            "pcci_pools", "Pools finished, by outcome", ["outcome"], registry=self.registry
        )
        self.jobs = Counter(
            "pcci_jobs", "Jobs finished, by outcome", ["outcome"], registry=self.registry
        )
        self.durations = Histogram(
            "pcci_job_duration_seconds",
            "Time from a job's start to its end",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.schedule_runs = Counter(
            "pcci_schedule_runs", "Runs of schedules this master handled, by outcome",
            ["outcome"], registry=self.registry,
        )
        self.deliveries = Counter(
            "pcci_webhook_deliveries", "Webhook deliveries tried, by result",
            ["result"], registry=self.registry,
        )
        for outcome in ("started", "skipped", "refused"):
            self.schedule_runs.labels(outcome)
        for result in ("sent", "retried", "dropped"):
            self.deliveries.labels(result)
        for outcome in ("success", "failure"):
            self.pools.labels(outcome)
        # Each job's end counts in one of these, found without the label
        # lookup (a lock and a tuple) that a pool of 10,000 would pay 10,000 times.
        self._job_counters = {outcome: self.jobs.labels(outcome) for outcome in JOB_OUTCOMES}
        state.dispatcher.job_end_hooks.append(self._job_ended)
        state.dispatcher.pool_end_hooks.append(self._pool_ended)

    def _job_ended(self, job: Job) -> None:
        self._job_counters[job_outcome(job)].inc()
        if job.duration is not None:
            self.durations.observe(job.duration)

    def _pool_ended(self, pool: Pool) -> None:
        self.pools.labels("success" if pool.status == 0 else "failure").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
