"""What the bench processes share: frame keys, the clock, and /proc readers.

Matching frames across processes: every 20 ms audio frame starts with a 6-byte key, and
6 bytes are exactly 8 base64 characters, so the first 8 characters of a payload identify
the frame without decoding it. Payloads pass through the relay unchanged both ways (audio is
audio/pcmu on both sides), so the key survives the trip.

- caller frames (Twilio -> model): key = call index (2 bytes) + frame number (4 bytes);
- model frames (model -> Twilio): key = model session (2 bytes) + response (2) + frame (2).

Times are `time.perf_counter()`, which on Linux is CLOCK_MONOTONIC: comparable across
processes on one machine.
"""

from __future__ import annotations

import base64
import os
import struct
import time
from typing import NamedTuple

FRAME_MS = 20
FRAME_S = FRAME_MS / 1000
FRAME_BYTES = 160
KEY_BYTES = 6
KEY_CHARS = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")

now = time.perf_counter


def caller_key(call_index: int, frame: int) -> str:
    return base64.b64encode(struct.pack(">HI", call_index, frame)).decode("ascii")


def parse_caller_key(key: str) -> tuple[int, int]:
    return struct.unpack(">HI", base64.b64decode(key))


def model_key_bytes(session: int, response: int, frame: int) -> bytes:
    return struct.pack(">HHH", session & 0xFFFF, response & 0xFFFF, frame & 0xFFFF)


def parse_model_key(key: str) -> tuple[int, int, int]:
    return struct.unpack(">HHH", base64.b64decode(key))


def pin_to(cpus: set[int]) -> None:
    """Pin this process (and the threads it starts later) to `cpus`, if the machine has them."""
    available = os.sched_getaffinity(0)
    wanted = cpus & set(range(os.cpu_count() or 1))
    if wanted and wanted != available:
        os.sched_setaffinity(0, wanted)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3; utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """CPU time of each of the process's live threads, in ns, from the scheduler's own
    accounting (/proc/PID/task/*/schedstat): exact, where utime/stime are sampled at the tick."""
    times = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                times[int(task)] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just ended
    return times


def proc_cpu_ns(pid: int) -> int:
    """CPU time of all the process's live threads, in ns."""
    return sum(thread_cpu_ns(pid).values())


def proc_cpu_split(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_busy_seconds() -> dict[int, tuple[float, float]]:
    """Per core, seconds not idle (user+nice+system+irq+softirq+steal) since boot, and of
    those, seconds in softirq (loopback TCP is processed there, charged to no process)."""
    busy = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, values[:8])
                total = user + nice + system + irq + softirq + steal
                busy[int(name[3:])] = (total / CLK_TCK, softirq / CLK_TCK)
    return busy


def all_processes_cpu_seconds(exclude: set[int]) -> dict[int, float]:
    """utime + stime of every process on the machine but `exclude`, by pid."""
    times = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        try:
            times[int(name)] = proc_cpu_seconds(int(name))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return times


def others_cpu_seconds(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU the other processes used between two snapshots (new ones count in full)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items() if t >= before.get(pid, 0.0))


class CpuSample(NamedTuple):
    """Every CPU counter a bench window reads, at one moment (seconds)."""

    processes: dict[str, float]  # per named process, all its threads
    server_loop: float  # the server's main thread: its event loop
    server_ticks: float  # the server's utime + stime, sampled at the clock tick
    server_split: tuple[float, float]  # the same, as (user, system)
    cores: dict[int, tuple[float, float]]  # cpu_busy_seconds()
    others: dict[int, float]  # every other process on the machine, by pid


def cpu_sample(pids: dict[str, int]) -> CpuSample:
    """Read every counter once; `pids["server"]` is the server process."""
    server = pids["server"]
    server_threads = thread_cpu_ns(server)
    processes = {
        name: (sum(server_threads.values()) if pid == server else proc_cpu_ns(pid)) / 1e9
        for name, pid in pids.items()
    }
    return CpuSample(
        processes=processes,
        server_loop=server_threads.get(server, 0) / 1e9,
        server_ticks=proc_cpu_seconds(server),
        server_split=proc_cpu_split(server),
        cores=cpu_busy_seconds(),
        others=all_processes_cpu_seconds(set(pids.values())),
    )
