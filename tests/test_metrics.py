"""Prometheus metrics: a running consumer's /metrics after real uploads, and the rules."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from cefmp4.common import metrics
from cefmp4.common.eventlog import EventLog
from cefmp4.common.keys import GROUPS
from cefmp4.common.s3 import Storage
from ops.local_services import free_port
from tests.conftest import ROOT, Processes, eventually
from tests.test_cli import cefmp4
from tests.test_pipeline import PART, wait_completed

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape_when_up(port: int) -> Scrape:
    result: list[Scrape] = []

    async def up() -> bool:
        try:
            result[:] = [await asyncio.to_thread(scrape, port)]
        except OSError:
            return False
        return True

    await eventually(up, 30, f"/metrics on port {port}")
    return result[0]


def value(scraped: Scrape, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_consumer_metrics_count_an_upload_exactly(
    processes: Processes, log: EventLog, storage: Storage, watch_dir: Path
) -> None:
    port = free_port()
    processes.start("producer")
    processes.start("consumer", METRICS_PORT=str(port), METRICS_HOST="127.0.0.1")
    before = await scrape_when_up(port)
    size = 2 * PART + 12_345  # parts of 5 MiB, 5 MiB and 12,345 bytes

    (watch_dir / "cam").mkdir()
    (watch_dir / "cam" / "a.mp4").write_bytes(os.urandom(size))
    state = await wait_completed(log, storage, watch_dir, "cam/a.mp4")
    await log.redis.xadd(log.keys.events, {b"garbage": b"not an event"})

    after: Scrape = {}

    async def settled() -> bool:
        after.update(await asyncio.to_thread(scrape, port))
        return (
            value(after, "cefmp4_streams", state="completed") == 1
            and value(after, "cefmp4_dead_letters_total", group="uploaders") == 1
            and value(after, "cefmp4_last_write_to_complete_seconds_count") == 1
        )

    await eventually(settled, 30, "gauges, dead letter and histograms in /metrics")

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("cefmp4_uploaded_bytes_total") == size
    assert moved("cefmp4_uploaded_parts_total") == 3
    assert moved("cefmp4_stream_duration_seconds_count") == 1
    assert value(after, "cefmp4_streams", state="active") == 0
    assert value(after, "cefmp4_dead_letter_entries") == 1
    for group in GROUPS:
        assert ("cefmp4_consumer_group_pending_entries", (("group", group),)) in after
    assert value(after, "cefmp4_consumer_group_lag_entries", group="uploaders") == 0
    # Bounded labels: no path, key or stream id ever becomes one.
    label_values = {v for _name, labels in after for _label, v in labels}
    assert not [v for v in label_values if "a.mp4" in v or state.stream_id in v]


def test_a_taken_metrics_port_stops_the_process_with_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cefmp4(
            {**env, "METRICS_PORT": str(port), "METRICS_HOST": "127.0.0.1"},
            "producer",
            cwd=tmp_path,
        )

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"cefmp4: invalid setting METRICS_PORT: cannot listen on 127.0.0.1:{port}: "
        "Address already in use"
    ]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("SlowDown", "SlowDown"),
        ("503", "503"),
        ("SomethingNew", "other"),
        ("cam1/rec.mp4", "other"),
        ("", "EndpointConnectionError"),
    ],
)
def test_s3_error_kinds_stay_bounded(code: str, kind: str) -> None:
    class EndpointConnectionError(Exception):
        pass

    assert metrics.s3_error_kind(code, EndpointConnectionError()) == kind


SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def _exported_names() -> set[str]:
    """Every sample name cefmp4's metrics can have, labelled children or not."""
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("cefmp4_")
        for suffix in SUFFIXES[family.type]
    }


def test_alert_rules_and_dashboard_use_only_metrics_cefmp4_exports() -> None:
    rules = yaml.safe_load((ROOT / "ops" / "alerts.yml").read_text())["groups"][0]["rules"]
    dashboard = json.loads((ROOT / "ops" / "grafana-dashboard.json").read_text())
    queries = [rule["expr"] for rule in rules] + [
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    ]

    used = {name for query in queries for name in re.findall(r"\bcefmp4_\w+", query)}

    exported = _exported_names()
    assert used - exported == set()
    assert {"cefmp4_uploaded_bytes_total", "cefmp4_consumer_group_lag_entries"} <= used
    for rule in rules:
        assert rule["alert"].startswith("Cef")
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
