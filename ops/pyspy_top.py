"""Where the time goes in ``py-spy record --format raw`` profiles (collapsed stacks).

    python -m ops.pyspy_top [--top 15] PROFILE.txt ...

Prints, over all given files and leaving out threads that only wait: busy samples by
what the innermost frame is (native frames too, when recorded with ``--native``), the
Python lines that were running, and the functions on the stack (inclusive).
``python -m ops.bench --profile DIR`` writes such profiles (``--native``) for every
cefmp4 process of the measured runs.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# A stack whose innermost Python frame is one of these is a thread waiting, not working
# (py-spy's own idle detection misses futex waits on some kernels).
WAITING = {
    "_worker (concurrent/futures/thread.py)",  # innermost only while blocked on its queue
    "ThreadedChildWatcher._do_waitpid (asyncio/unix_events.py)",
    "EpollSelector.select (selectors.py)",
    "Condition.wait (threading.py)",
    "WorkerThread.run (anyio/_backends/_asyncio.py)",  # watchfiles' notify thread, sleeping
}

# Innermost frame's file -> what it is, first match wins.
KINDS = (
    ("libz", "zlib (CRC32)"),
    ("libcrypto", "OpenSSL (SHA-256/MD5 of bodies)"),
    ("libc.so", "libc (send, pread, memcpy, ...)"),
    ("libpython", "CPython runtime (gc, allocation)"),
    ("consumer/", "cefmp4 consumer"),
    ("producer/", "cefmp4 producer"),
    ("common/", "cefmp4 common"),
    ("aiobotocore/", "aiobotocore"),
    ("botocore/", "botocore"),
    ("aiohttp/", "aiohttp"),
    ("redis/", "redis-py"),
    ("asyncio/", "asyncio"),
    ("watchfiles/", "watchfiles"),
)


def parse(path: Path) -> Counter[tuple[str, ...]]:
    """Stacks (outermost first) and their sample counts."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def _file(frame: str) -> str:
    match = _FRAME.match(frame)
    return match["file"] if match else ""


def is_python(frame: str) -> bool:
    file = _file(frame)
    return file.endswith(".py") or file.startswith("<frozen")


def kind_of(frame: str) -> str:
    file = _file(frame)
    for needle, name in KINDS:
        if needle in file:
            return name
    return file.split("/")[0] or frame


def function_of(frame: str) -> str:
    match = _FRAME.match(frame)
    return f"{match['func']} ({match['file']})" if match else frame


def innermost_python(stack: tuple[str, ...]) -> str:
    return next((frame for frame in reversed(stack) if is_python(frame)), stack[-1])


def summarize(stacks: Counter[tuple[str, ...]], top: int) -> str:
    total = sum(stacks.values())
    kinds: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    busy = 0
    for stack, count in stacks.items():
        line = innermost_python(stack)
        if function_of(line) in WAITING:
            continue
        busy += count
        kinds[kind_of(stack[-1])] += count
        lines[line] += count
        for name in {function_of(frame) for frame in stack if is_python(frame)}:
            functions[name] += count
    if not busy:
        return f"{total} samples, none busy"
    out = [f"{busy} busy samples of {total} (the rest: threads waiting); shares of busy:"]
    for title, counter in (
        ("innermost frame", kinds),
        ("running Python line (with the C code it called)", lines),
        ("on the stack (inclusive)", functions),
    ):
        out.append(f"\n{title}:")
        out.extend(f"{n / busy:6.1%}  {what}" for what, n in counter.most_common(top))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.pyspy_top", description=__doc__)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("profiles", nargs="+", type=Path)
    args = parser.parse_args(argv)
    stacks: Counter[tuple[str, ...]] = Counter()
    for path in args.profiles:
        stacks.update(parse(path))
    print(summarize(stacks, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
