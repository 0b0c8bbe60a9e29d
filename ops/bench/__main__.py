"""``python -m ops.bench`` (``make bench``): run the cases, print the table, write the JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ops.bench.cases import CASES, new_metrics, run_cases
from ops.bench.procstats import system_busy
from ops.bench.report import machine_info, render_table
from ops.bench.services import services
from ops.bench.sizes import FULL, QUICK
from ops.bench.workspace import Bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench",
        description="Benchmark cefmp4 against s5cmd on the same S3 server.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 run (smoke test)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), metavar="CASE")
    parser.add_argument("--repeat", type=int, default=None, help="runs per case (3; quick: 1)")
    parser.add_argument("--json", type=Path, default=Path("bench.json"), help="bench.json")
    parser.add_argument("--dir", type=Path, default=None, help="scratch dir (a new temp dir)")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw profiles here")
    parser.add_argument(
        "--consumer-cpus",
        type=float,
        default=0.1,
        help="CPU quota of each consumer in the capped scale-out runs (0.1)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.consumer_cpus <= 0:
        parser.error("--consumer-cpus must be positive")
    if args.repeat is not None:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    metrics = new_metrics(args.cases)
    started = time.monotonic()
    busy_before = system_busy()
    load_before = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="cefmp4-bench-", dir=args.dir))
    try:
        with services(base) as (redis_url, endpoint):
            bench = Bench(base, sizes, redis_url, endpoint, args.profile, args.consumer_cpus)
            try:
                info = machine_info(bench.s5cmd)
                run_cases(bench, metrics)
            finally:
                bench.redis.close()
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(base, ignore_errors=True)
    busy_after = system_busy()
    busy = (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1)
    info.update(
        quick=args.quick,
        repeat=sizes.repeat,
        idle_s=sizes.idle_s,
        wall_s=round(time.monotonic() - started, 1),
        loadavg_before=list(load_before),
        loadavg_after=list(os.getloadavg()),
        machine_busy_share=round(busy, 3),
        profiled=args.profile is not None,
    )
    report = {"machine": info, "cases": {m.name: m.as_json() for m in metrics.values()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(render_table(list(metrics.values())))
    print(
        f"\n{info['cpus']} CPUs, machine {busy:.0%} busy over {info['wall_s']:.0f} s "
        f"(load {load_before[0]:.1f} -> {info['loadavg_after'][0]:.1f}); JSON in {args.json}"
    )
    return 1 if any(m.error for m in metrics.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
