"""The relay benchmark: `make bench` (`python -m bench.relay`).

N concurrent calls through one server process pinned to core 0 (`taskset -c 0`), under
daphne and under uvicorn. The load runs on the other core, in two processes:
- bench.twilio_side: per call the signed voice webhook, then a media stream sending 50
  caller frames/s in real time, playing the server's audio in real time, echoing marks and
  honouring clear as Twilio does; plus Twilio's REST emulator and one staff dashboard socket
  on the live feed (so transcript and event broadcasts are delivered);
- bench.model_side: the fake Realtime server (peers/realtime/), streaming replies at
  50 deltas/s with transcripts, and a caller barge-in every ~turn-ms.

Each configuration runs twice, run by run in turn: the project, then the lean Channels relay
(bench.channels_relay, `--app channels-lean`: every frame forwarded, no features) on the same
load; the report sets them side by side, and the CPU target is a ratio of the two
(`--no-compare` runs the project alone; `--reference` adds the reference relay).

Every audio frame carries a unique key in its first bytes, so each direction is timed frame
by frame, in the steady-state window only (after every call is up, plus a warm-up):
- inbound:  Twilio client sends a media frame -> fake model receives the append carrying
  it (with CALLER_AUDIO_CHUNK_MS above 20, several frames share one append: `--chunk-ms`);
- outbound: fake model sends a delta -> Twilio client receives that media frame;
- barge-in: fake model sends speech_started -> Twilio client receives clear (end to end),
  and the server's own figure (speech_started parsed -> clear queued) from its barge_in events;
- CPU per call: the server's utime+stime over the window / window / N, as % of one core.

Output: a table on stdout and a JSON file in bench-output/.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import pstats
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path
from typing import Any

from peers.ports import free_port, wait_for_port

from .common import (
    FRAME_MS,
    caller_key,
    cpu_busy_seconds,
    cpu_sample,
    now,
    others_cpu_seconds,
    parse_model_key,
    pin_to,
)

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIR = ROOT / "bench-output"
AGENT_NUMBER = "+14155550100"
SERVER_CPU = 0
LOAD_CPU = 1
APPS = {
    "voicebot": "voicebot.asgi:application",
    "channels": "bench.channels_relay:app",
    "channels-lean": "bench.channels_relay:lean_app",
    "minimal": "bench.minimal:app",
}
# The CPU and latency targets at 50 calls with every feature on
# (docs/performance.md#the-reference-relay).
TARGET_CPU_PER_CALL = {"daphne": 0.6, "uvicorn": 0.45}
# The reference relay of docs/performance.md (bench.channels_relay), at 50 calls, on the machine the
# targets were set on. `--reference` runs it here: the ratio of the two tells how this
# machine compares, and each target as a share of the reference carries over.
REFERENCE_CPU_PER_CALL = {"daphne": 0.75, "uvicorn": 0.54}
REFERENCE_APP = "channels"
# Also run by --reference: the same relay with docs/performance.md's three further wins.
LEAN_APP = "channels-lean"
TARGET_P99_MS = 5.0
# The CPU target: at 50 calls, at most this share of the lean Channels relay's CPU per call.
TARGET_SHARE_OF_LEAN = 0.80
# 100 calls on one core under uvicorn: p99 under this, both ways.
TARGET_P99_AT_100_MS = 20.0


# --- set-up -----------------------------------------------------------------------------------


def base_environment(test_environment: dict[str, str]) -> dict[str, str]:
    """tests/servers.py's server_environment, minus the per-run parts."""
    env = {**os.environ, **test_environment}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "voicebot.settings",
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "WARNING",
            # The bench measures the embedded set-up (one process, SQLite, in-memory layer).
            "DATABASE_URL": "",
            "REDIS_URL": "",
        }
    )
    env.pop("VOICEBOT_TEST_DATABASE", None)
    return env


def test_environment() -> dict[str, str]:
    """voicebot/test_settings.py's TEST_ENVIRONMENT, read without importing that module
    (importing it loads the settings at once, on whatever database the environment names)."""
    source = (ROOT / "voicebot" / "test_settings.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "TEST_ENVIRONMENT"
            for target in node.targets
        ):
            # A dict of string expressions ("AC" + "1" * 32): evaluated with no builtins.
            expression = compile(ast.Expression(node.value), "test_settings", "eval")
            return eval(expression, {"__builtins__": {}})
    raise RuntimeError("TEST_ENVIRONMENT not found in voicebot/test_settings.py")


def prepare_database(path: Path) -> tuple[dict[str, str], str]:
    """Migrate a fresh SQLite file, add the agent and a staff login; return env and cookie."""
    env = base_environment(test_environment())
    env["SQLITE_PATH"] = str(path)
    os.environ.update(env)
    import django
    from django.conf import settings

    django.setup()
    if Path(settings.DATABASES["default"]["NAME"]) != path:
        raise RuntimeError(f"settings name {settings.DATABASES['default']['NAME']}, not {path}")
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from django.db import connections

    from agents.models import Agent, TransferTarget

    call_command("migrate", interactive=False, verbosity=0)
    agent = Agent.objects.create(name="Bench desk", phone_number=AGENT_NUMBER, greeting="")
    TransferTarget.objects.create(
        agent=agent,
        name="reception",
        phone_number="+14155550199",
        is_default=True,
        description="The front desk team",
    )
    user = User.objects.create_superuser("bench", "bench@example.com", secrets_password())
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    connections.close_all()
    return env, f"sessionid={session.session_key}"


def secrets_password() -> str:
    import secrets

    return secrets.token_urlsafe(16)


def server_command(
    server: str, port: int, args: argparse.Namespace, profile: Path | None, app: str
):
    python = [sys.executable]
    if profile is not None or args.preload:
        python += ["-m", "bench.serve"]
        if profile is not None:
            python += ["--profile", str(profile)]
        if args.preload:
            python += ["--preload", args.preload]
    application = APPS[app]
    if server == "daphne":
        command = python + ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
        command += [application]
    elif server == "uvicorn":
        command = python + ["-m", "uvicorn", application]
        command += ["--host", "127.0.0.1", "--port", str(port), "--ws", args.uvicorn_ws]
        command += ["--loop", "asyncio"]  # what requirements.txt installs, even if uvloop is here
        command += ["--no-access-log", "--ws-per-message-deflate", "false"]
        command += ["--lifespan", "off", "--log-level", "warning"]
    else:
        raise SystemExit(f"unknown server {server!r}: use daphne or uvicorn")
    if shutil.which("taskset"):
        return ["taskset", "-c", str(SERVER_CPU), *command], None
    return command, lambda: os.sched_setaffinity(0, {SERVER_CPU})


class Peer:
    """A load generator process speaking lines on stdin/stdout."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = open(log, "wb")
        profile_dir = os.environ.get("BENCH_PROFILE_PEERS")  # where the generators go: cProfile
        if profile_dir:
            name = command[2].rsplit(".", 1)[-1]
            command = [
                command[0],
                "-m",
                "cProfile",
                "-o",
                f"{profile_dir}/{name}.prof",
                *command[1:],
            ]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def expect(self, *prefixes: str, timeout: float = 120.0) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.process.args} exited; see {self.log.name}")
            line = line.strip()
            if line.startswith(prefixes):
                return line
        raise TimeoutError(f"no {prefixes} from {self.process.args}")

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()  # type: ignore[union-attr]
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def busy_elsewhere(seconds: float = 1.0) -> float:
    """% of a core busy (max over cores) while nothing of ours runs: others' load."""
    before = cpu_busy_seconds()
    time.sleep(seconds)
    after = cpu_busy_seconds()
    return max(100 * (after[c][0] - before[c][0]) / seconds for c in after)


def wait_until_quiet(limit_pct: float, max_wait_s: float) -> float:
    """Wait (up to max_wait_s) until no core is busier than limit_pct; return the last load."""
    deadline = time.monotonic() + max_wait_s
    load = busy_elsewhere()
    while load > limit_pct and time.monotonic() < deadline:
        print(
            f"  (machine busy: {load:.0f}% of a core used by other processes; waiting)", flush=True
        )
        time.sleep(4)
        load = busy_elsewhere()
    return load


def is_noisy(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Why a run's figures are disturbed by other processes (worth running again)."""
    if result["others_cpu_pct"] > args.noise_limit:
        return [f"other processes used {result['others_cpu_pct']:.0f}% of a core"]
    return []


def limits_hit(result: dict[str, Any]) -> list[str]:
    """Why a run's latencies say more about saturation than about the relay."""
    why = []
    if result["server_cpu_pct"] > 90:
        why.append(f"the server is saturated ({result['server_cpu_pct']:.0f}% of its core)")
    lateness = [result["twilio_side_lateness"], result["model_side_lateness"]]
    late = sum(side["late_over_20ms"] for side in lateness)
    frames = sum(side["frames"] for side in lateness)
    if result["generator_cpu_pct"] > 90 or (frames and late / frames > 0.001):
        why.append(
            f"the load generators are saturated ({result['generator_cpu_pct']:.0f}% of core "
            f"{LOAD_CPU}; {late} of {frames} frames sent > 20 ms late)"
        )
    return why


# --- one run ------------------------------------------------------------------------------------


def run_once(
    server: str,
    calls: int,
    run: int,
    args: argparse.Namespace,
    env: dict[str, str],
    cookie: str,
    template_db: Path,
    workdir: Path,
    app: str,
) -> dict[str, Any]:
    label = f"{server}-{calls}-{run}"
    db = workdir / f"{label}.sqlite3"
    shutil.copyfile(template_db, db)
    peer_env = {**env, "SQLITE_PATH": str(db)}
    model = Peer(
        [
            sys.executable,
            "-m",
            "bench.model_side",
            "--cpu",
            str(LOAD_CPU),
            "--turn-ms",
            str(args.turn_ms),
            "--reply-ms",
            str(args.reply_ms),
            "--caller-speech-ms",
            str(args.caller_speech_ms),
            "--seed",
            str(run * 1000 + calls),
        ],
        workdir / f"{label}-model.log",
        peer_env,
    )
    twilio = Peer(
        [
            sys.executable,
            "-m",
            "bench.twilio_side",
            "--cpu",
            str(LOAD_CPU),
            "--calls",
            str(calls),
            "--auth-token",
            env["TWILIO_AUTH_TOKEN"],
            "--public-url",
            env["PUBLIC_URL"],
            "--to-number",
            AGENT_NUMBER,
            "--cookie",
            cookie,
            "--dashboards",
            str(args.dashboards),
            "--listeners",
            str(args.listeners),
            "--seed",
            str(run * 1000 + calls + 1),
        ],
        workdir / f"{label}-twilio.log",
        peer_env,
    )
    process = None
    server_log_path = workdir / f"{label}-server.log"
    profile = workdir / f"{label}.prof" if args.profile else None
    try:
        model_url = model.expect("READY").split()[1]
        rest_url = twilio.expect("REST").split()[1]
        port = free_port()
        command, preexec = server_command(server, port, args, profile, app)
        server_env = {
            **peer_env,
            "OPENAI_REALTIME_URL": model_url,
            "TWILIO_API_BASE_URL": rest_url,
            "CALLER_AUDIO_CHUNK_MS": str(args.chunk_ms),
        }
        with open(server_log_path, "wb") as server_log:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=server_env,
                stdout=server_log,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
            )
        wait_for_port(port, process=process, timeout=30.0)
        time.sleep(0.5)  # let the server finish importing before the first webhook
        twilio.say(f"GO http://127.0.0.1:{port} ws://127.0.0.1:{port}")
        started = twilio.expect("STARTED", "FAILED", timeout=args.start_timeout + 120)
        if started.startswith("FAILED"):
            raise RuntimeError(f"{label}: {started} (--keep keeps the logs)")
        ramp_s = float(started.split()[2])
        time.sleep(args.warmup)

        pids = {"server": process.pid, "model": model.pid, "twilio": twilio.pid, "me": os.getpid()}
        if profile is not None:
            process.send_signal(signal.SIGUSR1)
        before = cpu_sample(pids)
        t_start, wall_start = now(), time.time()
        time.sleep(args.seconds)
        t_end, wall_end = now(), time.time()
        after = cpu_sample(pids)
        if profile is not None:
            process.send_signal(signal.SIGUSR2)
        window = t_end - t_start

        twilio_path = workdir / f"{label}-twilio.pickle"
        model_path = workdir / f"{label}-model.pickle"
        twilio.say(f"STOP {twilio_path}")
        twilio.expect("DONE", timeout=60)
        time.sleep(1.0)  # the server writes each stream's end
        model.say(f"DUMP {model_path}")
        model.expect("DUMPED", timeout=60)
        stop_process(process)
        import pickle

        with open(twilio_path, "rb") as f:
            twilio_data = pickle.load(f)
        with open(model_path, "rb") as f:
            model_data = pickle.load(f)
        if not args.keep:
            twilio_path.unlink()
            model_path.unlink()
    finally:
        if process is not None:
            stop_process(process)
        twilio.close()
        model.close()

    def pct(seconds: float) -> float:
        return 100 * seconds / window

    result = analyse(twilio_data, model_data, t_start, t_end, calls)
    result.update(
        {
            "server": server,
            "app": app,
            "calls": calls,
            "run": run,
            "window_s": round(window, 3),
            "ramp_s": ramp_s,
            "server_cpu_pct": pct(after.processes["server"] - before.processes["server"]),
            # The event loop's thread; the rest is the thread pool (database, sync code).
            "server_loop_thread_pct": pct(after.server_loop - before.server_loop),
            "server_cpu_ticks_pct": pct(after.server_ticks - before.server_ticks),
            "server_user_pct": pct(after.server_split[0] - before.server_split[0]),
            "server_sys_pct": pct(after.server_split[1] - before.server_split[1]),
            "twilio_side_cpu_pct": pct(after.processes["twilio"] - before.processes["twilio"]),
            "model_side_cpu_pct": pct(after.processes["model"] - before.processes["model"]),
            "orchestrator_cpu_pct": pct(after.processes["me"] - before.processes["me"]),
            "core_busy_pct": {
                str(core): pct(busy - before.cores[core][0])
                for core, (busy, _softirq) in after.cores.items()
            },
            "others_cpu_pct": pct(others_cpu_seconds(before.others, after.others)),
            "core_softirq_pct": {
                str(core): pct(softirq - before.cores[core][1])
                for core, (_busy, softirq) in after.cores.items()
            },
            "server_events": server_events(db, wall_start, wall_end),
            "server_log": server_log_summary(server_log_path),
        }
    )
    result["cpu_per_call_pct"] = result["server_cpu_pct"] / calls
    result["generator_cpu_pct"] = result["twilio_side_cpu_pct"] + result["model_side_cpu_pct"]
    if profile is not None and profile.exists():
        result["profile"] = profile_report(profile, args.profile_top)
    if not args.keep:
        db.unlink(missing_ok=True)
    return result


# --- analysis -----------------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def distribution(values_s: list[float]) -> dict[str, Any]:
    values = sorted(v * 1000 for v in values_s)
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "max_ms": values[-1] if values else None,
    }


def analyse(
    twilio: dict[str, Any], model: dict[str, Any], t_start: float, t_end: float, n_calls: int
) -> dict[str, Any]:
    calls = twilio["calls"]
    in_window = lambda t: t_start <= t < t_end  # noqa: E731

    # Inbound: Twilio client sent frame k of call c -> the model received its append.
    received_in = dict(zip(model["in_keys"], model["in_times"], strict=True))
    # Frames that share an append arrive together: the newest of them (the one that
    # completed the chunk) times the relay itself, without the wait for the chunk to fill.
    inbound, lost_in, late_twilio, relay_in = [], 0, [], []
    for call in calls:
        t0, index = call["t0"], call["index"]
        newest: dict[float, float] = {}  # append's arrival -> its newest frame's latency
        for frame, sent in enumerate(call["sent_times"]):
            if not in_window(sent):
                continue
            late_twilio.append(sent - (t0 + (frame + 1) * 0.02))
            got = received_in.get(caller_key(index, frame))
            if got is None:
                lost_in += 1
            else:
                inbound.append(got - sent)
                newest[got] = got - sent
        relay_in += newest.values()

    # Outbound: the model sent a delta -> the Twilio client received that media frame.
    sent_out = dict(zip(model["out_keys"], model["out_times"], strict=True))
    outbound, received_keys = [], set()
    for call in calls:
        for key, got in zip(call["recv_keys"], call["recv_times"], strict=True):
            sent = sent_out.get(key)
            received_keys.add(key)
            if sent is not None and in_window(sent):
                outbound.append(got - sent)
    sent_in_window = [k for k, t in sent_out.items() if in_window(t)]
    window = t_end - t_start
    not_delivered = sum(k not in received_keys for k in sent_in_window)

    # The model's own pacing: frame i of a response is due 20 ms after frame i - 1.
    first_frame: dict[tuple[int, int], float] = {}
    late_model = []
    decoded = [
        (parse_model_key(k), t) for k, t in zip(model["out_keys"], model["out_times"], strict=True)
    ]
    for (session, response, frame), t in decoded:
        if frame == 0:
            first_frame[(session, response)] = t
    for (session, response, frame), t in decoded:
        start = first_frame.get((session, response))
        if start is not None and in_window(t):
            late_model.append(t - (start + frame * 0.02))

    # Barge-in: speech_started sent -> the call's clear received.
    session_calls = model["summary"]["session_calls"]
    clears_by_call = {call["index"]: call["clear_times"] for call in calls}
    speech_by_call: dict[int, list[float]] = {}
    for session, t in model["speech"]:
        call_index = session_calls[session] if session < len(session_calls) else -1
        speech_by_call.setdefault(call_index, []).append(t)
    barge, barge_missed = [], 0
    for call_index, times in speech_by_call.items():
        clears = clears_by_call.get(call_index, [])
        times.sort()
        for i, t in enumerate(times):
            if not in_window(t):
                continue
            following = times[i + 1] if i + 1 < len(times) else float("inf")
            j = bisect_left(clears, t)
            if j < len(clears) and clears[j] < min(following, t + 1.0):
                barge.append(clears[j] - t)
            else:
                barge_missed += 1

    def lateness(values: list[float]) -> dict[str, Any]:
        values = sorted(values)
        return {
            "frames": len(values),
            "late_over_5ms": sum(v > 0.005 for v in values),
            "late_over_20ms": sum(v > 0.020 for v in values),
            "p99_ms": (percentile(values, 99) or 0) * 1000,
            "max_ms": (values[-1] if values else 0) * 1000,
        }

    errors = [e for call in calls for e in call["errors"]]
    appends = sum(1 for t in model.get("append_times", []) if in_window(t))
    return {
        "messages_per_call_s": {"appends": appends / window / n_calls},
        "inbound": distribution(inbound) | {"lost": lost_in},
        "inbound_relay": distribution(relay_in),
        "outbound": distribution(outbound) | {"not_delivered": not_delivered},
        "barge_in": distribution(barge) | {"speech_without_clear": barge_missed},
        "frames_per_call_s": {
            "inbound": len(inbound) / window / n_calls,
            "outbound": len(sent_in_window) / window / n_calls,
        },
        "twilio_side_lateness": lateness(late_twilio),
        "model_side_lateness": lateness(late_model),
        "calls_closed_by_server": sum(call["closed_by_server"] for call in calls),
        "media_received": sum(call["media_received"] for call in calls),
        "marks_received": sum(call["marks_received"] for call in calls),
        "mark_echoes_sent": sum(call["echoes_sent"] for call in calls),
        "clears_received": sum(len(call["clear_times"]) for call in calls),
        "protocol_errors": len(errors),
        "protocol_error_examples": sorted(set(errors))[:5],
        "dashboards": twilio["dashboards"],
        "listeners": twilio.get("listeners", []),
        "rest_requests": twilio["rest_requests"],
        "model": model["summary"] | {"session_calls": None},
    }


def server_events(db: Path, wall_start: float, wall_end: float) -> dict[str, Any]:
    """What the server recorded: its own clear latency per barge-in, and the transcript."""
    try:
        return _server_events(db, wall_start, wall_end)
    except sqlite3.Error as error:  # bench.minimal keeps no records
        return {"error": str(error)}


def _server_events(db: Path, wall_start: float, wall_end: float) -> dict[str, Any]:
    start = datetime.fromtimestamp(wall_start, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    end = datetime.fromtimestamp(wall_end, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT data FROM calls_callevent WHERE kind = 'barge_in'"
            " AND created_at >= ? AND created_at < ?",
            (start, end),
        ).fetchall()
        kinds = dict(connection.execute("SELECT kind, COUNT(*) FROM calls_callevent GROUP BY kind"))
        transcript = connection.execute(
            "SELECT COUNT(*) FROM calls_transcriptentry WHERE created_at >= ? AND created_at < ?",
            (start, end),
        ).fetchone()[0]
    latencies = []
    for (data,) in rows:
        value = json.loads(data).get("clear_latency_ms")
        if value is not None:
            latencies.append(value / 1000)
    return {
        "clear_latency": distribution(latencies),
        "transcript_entries_in_window": transcript,
        "event_kinds": kinds,
    }


PROBLEM_LINE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|^Traceback")


def server_log_summary(path: Path) -> dict[str, Any]:
    lines = path.read_text(errors="replace").splitlines()
    problems = [line for line in lines if PROBLEM_LINE.search(line)]
    return {"lines": len(lines), "warnings_or_errors": len(problems), "first": problems[:5]}


PACKAGES = (
    ("/autobahn/", "autobahn (daphne's WebSocket)"),
    ("/twisted/", "twisted (daphne's reactor)"),
    ("/daphne/", "daphne"),
    ("/uvicorn/", "uvicorn"),
    ("/websockets/", "websockets (model socket; uvicorn's WebSocket)"),
    ("/channels/", "channels"),
    ("/asgiref/", "asgiref"),
    ("/django/", "django"),
    ("/click/", "click (autobahn's debug-log colouring)"),
    ("/txaio/", "txaio"),
    ("/asyncio/", "asyncio"),
    ("/work/main/calls/", "project: calls"),
    ("/work/main/agents/", "project: agents"),
)


def package_of(filename: str) -> str:
    for marker, name in PACKAGES:
        if marker in filename:
            return name
    if filename == "~":
        return "builtins (C: sockets, epoll, json, ...)"
    return "other: " + filename.rsplit("/", 2)[-2] if "/" in filename else "other"


def profile_report(path: Path, top: int) -> str:
    out = StringIO()
    stats = pstats.Stats(str(path), stream=out)
    by_package: dict[str, float] = {}
    total = idle = 0.0
    for (filename, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        if name in (
            "<method 'poll' of 'select.epoll' objects>",
            "<method 'select' of 'select.epoll' objects>",
        ):
            idle += tottime  # waiting for the sockets: not work
            continue
        if filename == "~" and name in (
            "<method 'send' of '_socket.socket' objects>",
            "<method 'recv' of '_socket.socket' objects>",
            "<method 'recv_into' of '_socket.socket' objects>",
        ):
            package = "socket send/recv syscalls (loopback TCP)"
        else:
            package = package_of(filename)
        by_package[package] = by_package.get(package, 0.0) + tottime
        total += tottime
    out.write(
        f"--- own time by package (tottime), of {total:.2f}s busy; {idle:.2f}s in epoll ---\n"
    )
    for package, seconds in sorted(by_package.items(), key=lambda kv: -kv[1]):
        out.write(f"{100 * seconds / total:6.1f}%  {seconds:7.3f}s  {package}\n")
    out.write("\n")
    stats.sort_stats("tottime").print_stats(top)
    out.write("\n--- by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# --- the report ---------------------------------------------------------------------------------


def median_of(results: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for result in results:
        value: Any = result
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)
    return statistics.median(values) if values else None


SUMMARY_FIELDS = {
    "cpu_per_call_pct": ("cpu_per_call_pct",),
    "server_cpu_pct": ("server_cpu_pct",),
    "server_user_pct": ("server_user_pct",),
    "server_sys_pct": ("server_sys_pct",),
    "inbound_p50_ms": ("inbound", "p50_ms"),
    "inbound_p99_ms": ("inbound", "p99_ms"),
    "inbound_relay_p50_ms": ("inbound_relay", "p50_ms"),
    "inbound_relay_p99_ms": ("inbound_relay", "p99_ms"),
    "outbound_p50_ms": ("outbound", "p50_ms"),
    "outbound_p99_ms": ("outbound", "p99_ms"),
    "clear_p50_ms": ("barge_in", "p50_ms"),
    "clear_p99_ms": ("barge_in", "p99_ms"),
    "server_clear_p50_ms": ("server_events", "clear_latency", "p50_ms"),
    "server_clear_p99_ms": ("server_events", "clear_latency", "p99_ms"),
    "generator_cpu_pct": ("generator_cpu_pct",),
    "others_cpu_pct": ("others_cpu_pct",),
    "in_frames_per_call_s": ("frames_per_call_s", "inbound"),
    "appends_per_call_s": ("messages_per_call_s", "appends"),
    "out_frames_per_call_s": ("frames_per_call_s", "outbound"),
    "twilio_late_over_5ms": ("twilio_side_lateness", "late_over_5ms"),
    "model_late_over_5ms": ("model_side_lateness", "late_over_5ms"),
}


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {name: median_of(results, *path) for name, path in SUMMARY_FIELDS.items()}


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[tuple[str, int, dict[str, Any], int]]) -> str:
    header = (
        f"{'server':<16} {'calls':>5} {'runs':>4} {'cpu/call%':>9} {'srv cpu%':>8} "
        f"{'in p50':>7} {'in p99':>7} {'out p50':>7} {'out p99':>7} "
        f"{'clr p50':>7} {'clr p99':>7} {'srv clr p99':>11} {'gen cpu%':>8} "
        f"{'late>5ms':>8} {'fps in/out':>10} {'others%':>7} {'noisy':>5}"
    )
    lines = [header, "-" * len(header)]
    for server, calls, s, runs in rows:
        late = (s["twilio_late_over_5ms"] or 0) + (s["model_late_over_5ms"] or 0)
        lines.append(
            f"{server:<16} {calls:>5} {runs:>4} {fmt(s['cpu_per_call_pct'], 3):>9} "
            f"{fmt(s['server_cpu_pct'], 1):>8} "
            f"{fmt(s['inbound_p50_ms']):>7} {fmt(s['inbound_p99_ms']):>7} "
            f"{fmt(s['outbound_p50_ms']):>7} {fmt(s['outbound_p99_ms']):>7} "
            f"{fmt(s['clear_p50_ms']):>7} {fmt(s['clear_p99_ms']):>7} "
            f"{fmt(s['server_clear_p99_ms'], 3):>11} {fmt(s['generator_cpu_pct'], 1):>8} "
            f"{late:>8.0f} "
            f"{fmt(s['in_frames_per_call_s'], 0):>5}/{fmt(s['out_frames_per_call_s'], 0):<4} "
            f"{fmt(s['others_cpu_pct'], 1):>7} "
            f"{s.get('noisy_runs', 0):>3}/{runs}"
            f"{'  SATURATED' if s.get('saturated_runs') else ''}"
        )
    return "\n".join(lines)


LEGEND = """\
cpu/call%   server CPU time (scheduler ns, all threads) over the window / window / calls,
            as % of one core (median of runs)
in/out      added relay latency per audio frame, ms: Twilio send -> model receive (in),
            model send -> Twilio receive (out); includes loopback and the receiving
            generator's own scheduling
clr         barge-in, ms: fake model sends speech_started -> Twilio client receives clear
srv clr     the server's own figure: speech_started parsed -> clear queued (barge_in events)
gen cpu%    both load generator processes (core 1), % of one core
late>5ms    frames the generators sent more than 5 ms after due, in the window (both sides)
fps in/out  audio frames per call per second actually relayed (offered: 50 in, ~44 out)
others%     CPU used by every other process on the machine in the window; should be ~0
noisy       runs disturbed by other processes (> --noise-limit % of a core), after --retries
SATURATED   the server's core > 90 % busy, or the generators' (> 90 %, or > 0.1 % of frames
            sent 20 ms late): latencies then measure queueing, not the relay"""


def check_targets(server: str, calls: int, s: dict[str, Any]) -> list[str]:
    """The latency targets (README, Performance), at 50 calls and, under uvicorn, 100."""
    notes = []

    def check(name: str, value: float | None, limit: float) -> None:
        if value is not None:
            verdict = "meets" if value < limit else "MISSES"
            notes.append(f"{server} @{calls}: {name} {value:.2f} ms {verdict} target < {limit} ms")

    if calls == 50:
        check("outbound p99", s["outbound_p99_ms"], TARGET_P99_MS)
        check("inbound p99", s["inbound_p99_ms"], s["chunk_ms"] + TARGET_P99_MS)
        check("clear inside the server p99", s["server_clear_p99_ms"], TARGET_P99_MS)
    if calls == 100 and server == "uvicorn":
        check("outbound p99", s["outbound_p99_ms"], TARGET_P99_AT_100_MS)
        relay_in = s["inbound_relay_p99_ms"]
        check("inbound p99 (newest frame of each append)", relay_in, TARGET_P99_AT_100_MS)
        check("inbound p99", s["inbound_p99_ms"], s["chunk_ms"] + TARGET_P99_AT_100_MS)
    return notes


def versus_lean(rows: list, app: str) -> tuple[str, list[dict[str, Any]], list[str]]:
    """The project next to the lean Channels relay, run by run on the same load: a table,
    its figures, and the CPU target's verdicts."""
    by_key = {(label, calls): s for label, calls, s, _ in rows}
    header = (
        f"{'server':<8} {'calls':>5} {'chunk':>5} {'cpu/call':>8} {'lean':>7} {'ratio':>6} "
        f"{'in p50/p99':>12} {'in* p50/p99':>12} {'out p50/p99':>12} {'clr p50/p99':>12} "
        f"{'srv clr p99':>11} "
        f"{'lean in p50/p99':>15} {'lean out p50/p99':>16} {'appends/s':>9}"
    )
    lines, figures, notes = [header, "-" * len(header)], [], []
    for (label, calls), s in by_key.items():
        lean = by_key.get((f"{label}:{LEAN_APP}", calls))
        if ":" in label or lean is None:
            continue
        cpu, lean_cpu = s["cpu_per_call_pct"], lean["cpu_per_call_pct"]
        ratio = cpu / lean_cpu if cpu is not None and lean_cpu else None

        def pair(x: dict[str, Any], name: str) -> str:
            return f"{fmt(x[name + '_p50_ms'], 1)}/{fmt(x[name + '_p99_ms'], 1)}"

        flags = ("  SATURATED" if s.get("saturated_runs") or lean.get("saturated_runs") else "") + (
            "  NOISY" if s.get("noisy_runs") or lean.get("noisy_runs") else ""
        )
        lines.append(
            f"{label:<8} {calls:>5} {s['chunk_ms']:>5} {fmt(cpu, 3):>8} {fmt(lean_cpu, 3):>7} "
            f"{fmt(ratio):>6} {pair(s, 'inbound'):>12} {pair(s, 'inbound_relay'):>12} "
            f"{pair(s, 'outbound'):>12} "
            f"{pair(s, 'clear'):>12} {fmt(s['server_clear_p99_ms'], 3):>11} "
            f"{pair(lean, 'inbound'):>15} {pair(lean, 'outbound'):>16} "
            f"{fmt(s['appends_per_call_s'], 1):>9}{flags}"
        )
        figures.append(
            {"server": label, "calls": calls, "chunk_ms": s["chunk_ms"], "cpu_per_call_pct": cpu}
            | {"lean_cpu_per_call_pct": lean_cpu, "share_of_lean": ratio}
        )
        if calls == 50 and ratio is not None:
            verdict = "meets" if ratio <= TARGET_SHARE_OF_LEAN else "MISSES"
            notes.append(
                f"{label} @50: cpu/call {ratio:.2f} x the lean Channels relay {verdict} "
                f"target <= {TARGET_SHARE_OF_LEAN}"
            )
    return "\n".join(lines), figures, notes


VERSUS_LEGEND = f"""\
The project ({{app}}) and the lean Channels relay ({APPS[LEAN_APP]}, every frame forwarded,
no features) on the same load, runs interleaved; medians of the runs. chunk: caller audio
per append to the model, ms (the lean relay: 20, every frame). ratio: the project's CPU per
call / the lean relay's. in/out/clr: ms as in the table above; in*: inbound, timed by the
newest frame of each append (the relay's own latency, without the wait for a chunk to
fill). appends/s: the project's
appends to the model per call and second (the lean relay: 50)."""


CALIBRATION_LEGEND = f"""\
Against the reference relay of docs/performance.md ({APPS[REFERENCE_APP]}), run here on the same
load: 'machine' is its CPU per call here / there; 'share' is the project's CPU per call as a
share of the reference's; the target share is the target / the reference there.
The lean relay ({APPS[LEAN_APP]}) is that relay with docs/performance.md's three further wins."""


def calibrate(rows: list, app: str) -> list[tuple[str, dict[str, Any]]]:
    """Each (server, calls) run both as the app and as the reference: the ratios."""
    figures = {(label, calls): s["cpu_per_call_pct"] for label, calls, s, _ in rows}
    lines = []
    for (label, calls), cpu in figures.items():
        reference = figures.get((f"{label}:{REFERENCE_APP}", calls))
        if ":" in label or not reference or cpu is None:
            continue
        share = cpu / reference
        entry = {"server": label, "calls": calls, "app_cpu_per_call_pct": cpu}
        entry |= {"reference_cpu_per_call_pct": reference, "share_of_reference": share}
        line = (
            f"{label} @{calls}: {app} {cpu:.3f}% / reference {reference:.3f}% = share {share:.2f}"
        )
        there, target = REFERENCE_CPU_PER_CALL.get(label), TARGET_CPU_PER_CALL.get(label)
        if there and target:
            target_share = target / there
            entry |= {"machine_factor": reference / there, "target_share": target_share}
            entry["meets_target_share"] = share < target_share
            verdict = "meets" if share < target_share else "MISSES"
            line += (
                f"; machine x{reference / there:.2f} ({there}% there); target share "
                f"< {target_share:.2f} ({target}% / {there}%): {verdict}"
                f" (= {target * reference / there:.3f}% per call here)"
            )
        lean = figures.get((f"{label}:{LEAN_APP}", calls))
        if lean:
            entry |= {"lean_cpu_per_call_pct": lean, "share_of_lean": cpu / lean}
            line += f"; share of the lean relay ({lean:.3f}%) {cpu / lean:.2f}"
        lines.append((line, entry))
    return lines


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.relay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--calls", default="25,50,100", help="concurrent calls, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    parser.add_argument("--servers", default="daphne,uvicorn", help="daphne and/or uvicorn")
    parser.add_argument("--runs", type=int, default=1, help="runs per (server, calls); median")
    parser.add_argument("--warmup", type=float, default=3.0, help="s after all calls are up")
    parser.add_argument(
        "--uvicorn-ws",
        default="websockets-sansio",
        choices=["websockets", "websockets-sansio", "wsproto"],
        help="uvicorn's WebSocket implementation (wsproto is not installed)",
    )
    parser.add_argument(
        "--app",
        choices=sorted(APPS),
        default="voicebot",
        help="voicebot (the project), channels (the reference relay of docs/performance.md), "
        "channels-lean (the same with its further wins) or minimal (a bare relay without "
        "Django or Channels, the floor)",
    )
    parser.add_argument(
        "--chunk-ms",
        type=int,
        help="the project's CALLER_AUDIO_CHUNK_MS (default: the setting's default)",
    )
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="run the project alone, without the lean Channels relay next to it",
    )
    parser.add_argument("--turn-ms", type=int, default=5000, help="caller barges in this often")
    parser.add_argument(
        "--caller-speech-ms", type=int, default=600, help="caller speech per turn (model silent)"
    )
    parser.add_argument("--reply-ms", type=int, default=8000, help="length of each model reply")
    parser.add_argument("--dashboards", type=int, default=1, help="staff live-feed sockets")
    parser.add_argument(
        "--listeners", type=int, default=0, help="calls with a staff member listening in"
    )
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument(
        "--noise-limit",
        type=float,
        default=10.0,
        help="%% of a core other processes may use before a run counts as noisy",
    )
    parser.add_argument("--retries", type=int, default=2, help="re-runs of a noisy run")
    parser.add_argument(
        "--quiet-wait", type=float, default=60.0, help="s to wait for a quiet machine per run"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 25 calls, 10 s")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the server's event loop in the window"
    )
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument(
        "--preload",
        metavar="MODULE",
        help="import MODULE in the server first (to measure a candidate optimization)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also run the reference relay of docs/performance.md on the same load, and compare",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.add_argument("--json", type=Path, help="where to write the JSON (bench-output/...)")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.seconds, args.warmup = "25", 10.0, 2.0
    args.call_counts = [int(n) for n in args.calls.split(",") if n.strip()]
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    return args


def run_with_retries(
    server: str,
    calls: int,
    run: int,
    args: argparse.Namespace,
    env: dict[str, str],
    cookie: str,
    template: Path,
    workdir: Path,
    app: str,
    failures: list[str],
) -> dict[str, Any] | None:
    """One run, again if other processes disturbed it (up to --retries); None if it failed."""
    result = None
    for attempt in range(args.retries + 1):
        wait_until_quiet(args.noise_limit, args.quiet_wait)
        try:
            result = run_once(server, calls, run, args, env, cookie, template, workdir, app)
        except Exception as error:  # report it, go on with the next run
            print(f"  ! run failed: {error}", flush=True)
            failures.append(f"{server} {app} {calls} run {run}: {error}")
            return None
        result["noise"] = is_noisy(result, args)
        result["limits"] = limits_hit(result)
        result["attempt"] = attempt + 1
        if not result["noise"] or attempt == args.retries:
            break
        print(f"  noisy ({'; '.join(result['noise'])}): running it again", flush=True)
    assert result is not None
    loop_share = result["server_loop_thread_pct"] / max(result["server_cpu_pct"], 1e-9)
    print(
        f"  cpu/call {result['cpu_per_call_pct']:.3f}%  "
        f"(loop thread {100 * loop_share:.0f}%)  "
        f"in p99 {fmt(result['inbound']['p99_ms'])} ms  "
        f"out p99 {fmt(result['outbound']['p99_ms'])} ms  "
        f"clear p99 {fmt(result['barge_in']['p99_ms'])} ms  "
        f"appends/call/s {fmt(result['messages_per_call_s']['appends'], 1)}  "
        f"gen cpu {result['generator_cpu_pct']:.0f}%  "
        f"others {result['others_cpu_pct']:.1f}%",
        flush=True,
    )
    for problem in run_problems(result):
        print(f"  ! {problem}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        print("warning: one CPU only; server and load share it", file=sys.stderr)
    pin_to({LOAD_CPU})
    workdir = Path(tempfile.mkdtemp(prefix="voicebot-bench-"))
    template = workdir / "template.sqlite3"
    started = time.time()
    print(f"bench: preparing the database in {workdir}", flush=True)
    env, cookie = prepare_database(template)
    if args.chunk_ms is None:
        from django.conf import settings

        args.chunk_ms = settings.CALLER_AUDIO_CHUNK_MS
    load_before = os.getloadavg()

    results: list[dict[str, Any]] = []
    failures: list[str] = []
    rows = []
    notes: list[str] = []
    references = [LEAN_APP] + ([REFERENCE_APP] if args.reference else [])
    if args.no_compare:
        references = []
    apps = [args.app] + [app for app in references if app != args.app]
    try:
        for server in args.server_list:
            for calls in args.call_counts:
                # The apps take turns run by run, so that a slow patch of the machine's
                # day falls on all of them alike.
                runs_of: dict[str, list[dict[str, Any]]] = {app: [] for app in apps}
                for run in range(1, args.runs + 1):
                    for app in apps:
                        label = server if app == args.app else f"{server}:{app}"
                        print(f"bench: {label}, {calls} calls, run {run}/{args.runs} ...", flush=1)
                        result = run_with_retries(
                            server, calls, run, args, env, cookie, template, workdir, app, failures
                        )
                        if result is not None:
                            runs_of[app].append(result)
                            results.append(result)
                for app in apps:
                    runs = runs_of[app]
                    if not runs:
                        continue
                    label = server if app == args.app else f"{server}:{app}"
                    summary = summarise(runs)
                    summary["noisy_runs"] = sum(bool(r.get("noise")) for r in runs)
                    summary["saturated_runs"] = sum(bool(r.get("limits")) for r in runs)
                    summary["chunk_ms"] = args.chunk_ms if app == "voicebot" else FRAME_MS
                    rows.append((label, calls, summary, len(runs)))
                    if app == args.app:
                        notes += check_targets(server, calls, summary)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        f"Relay benchmark of {APPS[args.app]}: server on core {SERVER_CPU}, "
        f"load on core {LOAD_CPU}, "
        f"{args.seconds:g} s window, barge-in every ~{args.turn_ms} ms, "
        f"uvicorn --ws {args.uvicorn_ws}"
    )
    print(table(rows))
    print()
    print(LEGEND)
    if notes:
        print()
        print("\n".join(notes))
    versus, versus_figures, versus_notes = versus_lean(rows, args.app)
    if versus_figures:
        print()
        print(VERSUS_LEGEND.format(app=args.app))
        print(versus)
        print()
        print("\n".join(versus_notes))
    calibration = calibrate(rows, args.app)
    if calibration:
        print()
        print(CALIBRATION_LEGEND)
        print("\n".join(line for line, _ in calibration))
    for result in results:
        if "profile" in result:
            print(
                f"\n=== cProfile, {result['server']} {result['calls']} calls, run {result['run']}"
                " (event-loop thread, window only; cProfile inflates Python call costs) ==="
            )
            print(result["profile"])

    OUTPUT_DIR.mkdir(exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = args.json or OUTPUT_DIR / f"relay-{stamp}.json"
    document = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "platform": platform.platform(),
        },
        "summary": [
            {"server": server, "calls": calls, "runs": runs, **summary}
            for server, calls, summary, runs in rows
        ],
        "calibration": [figures for _, figures in calibration],
        "versus_lean": versus_figures,
        "runs": results,
        "failures": failures,
        "duration_s": round(time.time() - started, 1),
    }
    path.write_text(json.dumps(document, indent=2, default=str))
    print(f"\nJSON: {path}  (total {document['duration_s']} s)")
    if args.keep:
        print(f"work directory kept: {workdir}")
    if failures:
        print("FAILED runs:\n  " + "\n  ".join(failures))
        return 1
    return 0


def run_problems(result: dict[str, Any]) -> list[str]:
    problems = []
    if result["calls_closed_by_server"]:
        problems.append(f"the server closed {result['calls_closed_by_server']} streams")
    if result["protocol_errors"]:
        problems.append(
            f"{result['protocol_errors']} Twilio protocol errors, e.g. "
            f"{result['protocol_error_examples']}"
        )
    if result["inbound"]["lost"]:
        problems.append(f"{result['inbound']['lost']} caller frames never reached the model")
    if result["server_log"]["warnings_or_errors"]:
        problems.append(
            f"server logged {result['server_log']['warnings_or_errors']} warnings/errors, "
            f"first: {result['server_log']['first'][:2]}"
        )
    for limit in result.get("limits", []):
        problems.append(f"SATURATED: {limit}")
    if result.get("noise"):
        problems.append("NOISY, figures not reliable: " + "; ".join(result["noise"]))
    for dashboard in result["dashboards"]:
        if dashboard["error"]:
            problems.append(f"staff dashboard socket: {dashboard['error']}")
    return problems


if __name__ == "__main__":
    sys.exit(main())
