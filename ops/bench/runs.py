"""One measured run: cefmp4 on files moved in or on a file being written, or s5cmd."""

from __future__ import annotations

import statistics
import time
import uuid
from pathlib import Path

from ops.bench.pipeline import CANARY, Pipeline
from ops.bench.sizes import GIB, MB, MIB, Live
from ops.bench.workspace import Bench

REGROWTH_PART_MIB = 5
FLEET_PART_MIB = 5


def _timeout_for(total_bytes: int) -> float:
    return 120.0 + total_bytes / (2 * MIB)


def cefmp4_moved_in(
    bench: Bench,
    label: str,
    sources: list[Path],
    consumers: int = 1,
    consumer_cpus: float | None = None,
    idle_s: float | None = None,
    finalize_on_close: bool = False,
) -> dict[str, float]:
    """cefmp4 with `consumers` consumers uploading `sources`, moved into WATCH_DIR at once."""
    total = sum(p.stat().st_size for p in sources)
    idle_s = idle_s or bench.sizes.idle_s
    with Pipeline(
        bench,
        label,
        consumers,
        consumer_cpus=consumer_cpus,
        idle_s=idle_s,
        finalize_on_close=finalize_on_close,
    ) as p:
        start, objects = p.move_in(sources)
        done = p.wait_completed(
            {rel: path.stat().st_size for rel, path in objects.items()}, _timeout_for(total)
        )
        cpu = p.cpu_used()
        producer_cpu = p.cpu_used("producer")
        per_consumer = [p.cpu_used(f"consumer{i}") for i in range(consumers)]
        peak = p.consumer_peak_rss()
        redis_added = p.redis_bytes_added()
        throttled = sum(q.throttled_s() for q in p.quotas)
        p.verify(objects)
    seconds = done - start - idle_s
    return {
        "seconds": seconds,
        "seconds_with_idle": done - start,
        "mib_s": total / MIB / max(seconds, 1e-9),
        "cpu_s": cpu,
        "cpu_s_per_gib": cpu / (total / GIB),
        "producer_cpu_s_per_gib": producer_cpu / (total / GIB),
        "busiest_consumer_cpu_share": max(per_consumer) / max(sum(per_consumer), 1e-9),
        "consumer_peak_rss_mb": peak / MB,
        "redis_mb_per_gib": redis_added / MB / (total / GIB),
        "quota_throttled_s": throttled,
    }


def s5cmd_upload(bench: Bench, sources: list[Path]) -> dict[str, float]:
    """s5cmd uploading the same files into a bucket of its own."""
    total = sum(p.stat().st_size for p in sources)
    bucket = f"s5cmd{uuid.uuid4().hex[:10]}"
    bench.s5cmd.run("mb", f"s3://{bucket}")
    try:
        # As cefmp4's canary does: weed allocates a bucket's volumes on its first write.
        warm = bench.base / CANARY
        warm.write_bytes(b"\0" * 4096)
        bench.s5cmd.run("cp", str(warm), f"s3://{bucket}/{CANARY}")
        wall, cpu = bench.s5cmd.timed("cp", f"{sources[0].parent}/*", f"s3://{bucket}/")
    finally:
        bench.s5cmd.remove_bucket(bucket)
    return {
        "seconds": wall,
        "mib_s": total / MIB / wall,
        "cpu_s": cpu,
        "cpu_s_per_gib": cpu / (total / GIB),
    }


def cefmp4_live(
    bench: Bench, label: str, live: Live, pool: Path, part_mib: int = 0
) -> dict[str, float]:
    """cefmp4 uploading one file while it is written at `live`'s rate from the pool file."""
    rel = "live.mp4"
    with Pipeline(bench, label, part_mib=part_mib) as p:
        last_write, rate = p.write_live(rel, live, pool)
        uploaded = p.uploaded_bytes(rel)
        done = p.wait_completed({rel: live.size_bytes}, _timeout_for(live.size_bytes))
        cpu = p.cpu_used()
        peak = p.consumer_peak_rss()
        redis_added = p.redis_bytes_added()
        events = p.event_count()
        p.verify({rel: p.watch_dir / rel})
    return {
        "lag_s": done - last_write - bench.sizes.idle_s,
        "lag_with_idle_s": done - last_write,
        "uploaded_mib_when_writer_stopped": uploaded / MIB,
        "write_rate_mib_s": rate,
        "cpu_s_per_gib": cpu / (live.size_bytes / GIB),
        "consumer_peak_rss_mb": peak / MB,
        "redis_bytes_added": float(redis_added),
        "redis_mb_per_gib": redis_added / MB / (live.size_bytes / GIB),
        "events_per_gib": events / (live.size_bytes / GIB),
    }


def cefmp4_regrowth(bench: Bench, label: str, pool: Path) -> dict[str, float]:
    """A recording completed, then grown: what the consumer sent again, and how soon the
    object was up to date after the last write."""
    sz = bench.sizes
    rel = "regrown.mp4"
    first, added = sz.regrowth_bytes, sz.regrowth_added_bytes
    with (
        pool.open("rb") as source,
        Pipeline(bench, label, part_mib=REGROWTH_PART_MIB, metrics=True) as p,
    ):
        path = p.watch_dir / rel
        start = time.monotonic()
        path.write_bytes(source.read(first))
        first_done = p.wait_completed({rel: first}, _timeout_for(first))
        sent_before = p.consumer_counter("cefmp4_uploaded_bytes_total")
        copied_before = p.consumer_counter("cefmp4_copied_bytes_total")
        with path.open("ab") as out:
            out.write(source.read(added))
        last_write = time.monotonic()
        done = p.wait_completed({rel: first + added}, _timeout_for(first + added))
        sent = p.consumer_counter("cefmp4_uploaded_bytes_total") - sent_before
        copied = p.consumer_counter("cefmp4_copied_bytes_total") - copied_before
        p.verify({rel: path})
    return {
        "sent_again_mib": sent / MIB,
        "copied_mib": copied / MIB,
        "seconds": done - last_write - sz.idle_s,
        "seconds_with_idle": done - last_write,
        "first_upload_seconds": first_done - start - sz.idle_s,
    }


def cefmp4_fleet(
    bench: Bench, label: str, pool: Path, *, finalize_on_close: bool = False
) -> dict[str, float]:
    """Cameras recording at once, two consumers: how long after its idle setting each
    recording's object was complete; with `finalize_on_close`, after its last write (the
    writers close their files just after it)."""
    sz = bench.sizes
    rels = [f"cam{i:03d}.mp4" for i in range(sz.fleet_files)]
    total = sz.fleet_files * sz.fleet_file_bytes
    with Pipeline(
        bench,
        label,
        consumers=2,
        part_mib=FLEET_PART_MIB,
        idle_s=sz.fleet_idle_s,
        finalize_on_close=finalize_on_close,
    ) as p:
        last_writes = p.write_fleet(rels, sz.fleet_file_bytes, sz.fleet_write_s, pool)
        done = p.wait_each_completed(dict.fromkeys(rels, sz.fleet_file_bytes), _timeout_for(total))
        p.verify({rel: p.watch_dir / rel for rel in rels})
    waited_s = 0.0 if finalize_on_close else sz.fleet_idle_s
    lags = sorted(done[rel] - last_writes[rel] - waited_s for rel in rels)
    return {
        "p50_s": statistics.median(lags),
        "p95_s": statistics.quantiles(lags, n=20, method="inclusive")[18],
        "max_s": lags[-1],
    }


def cefmp4_close(bench: Bench, label: str, live: Live, pool: Path) -> dict[str, float]:
    """cefmp4 finishing a file as its writer closes it, the idle timer far off."""
    rel = "closed.mp4"
    idle_s = bench.sizes.close_idle_s
    with Pipeline(bench, label, idle_s=idle_s, finalize_on_close=True) as p:
        closed, rate = p.write_live(rel, live, pool)
        uploaded = p.uploaded_bytes(rel)
        done = p.wait_completed({rel: live.size_bytes}, _timeout_for(live.size_bytes))
        p.verify({rel: p.watch_dir / rel})
    return {
        "close_to_complete_s": done - closed,
        "unsent_mib_at_close": (live.size_bytes - uploaded) / MIB,
        "write_rate_mib_s": rate,
    }
