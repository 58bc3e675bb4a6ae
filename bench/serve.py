"""Run a server module (daphne, uvicorn) with bench instrumentation, for bench.relay.

    python -m bench.serve [--profile OUT.prof] [--preload MODULE|FILE.py] -m daphne ARGS...

--profile: cProfile, enabled by SIGUSR1 and stopped by SIGUSR2, which writes OUT.prof
  (pstats). cProfile profiles the thread that enables it: the main thread, which runs the
  event loop and so every consumer, session and backend coroutine; the thread pool (ORM
  writes) is not included. It adds overhead per Python call: read it for where the time
  goes, not for totals.
--preload: import MODULE (or run a .py file) first; how the bench measures a candidate
  optimization (a monkeypatch in a scratch file) without editing the application.
"""

from __future__ import annotations

import cProfile
import importlib
import runpy
import signal
import sys


def main() -> None:
    argv = sys.argv[1:]
    profile_path = preload = None
    while argv and argv[0] != "-m":
        option, value, argv = argv[0], argv[1], argv[2:]
        if option == "--profile":
            profile_path = value
        elif option == "--preload":
            preload = value
        else:
            raise SystemExit(__doc__)
    if len(argv) < 2:
        raise SystemExit(__doc__)
    module, rest = argv[1], argv[2:]
    if preload:
        if preload.endswith(".py"):
            runpy.run_path(preload, run_name="bench_preload")
        else:
            importlib.import_module(preload)
    if profile_path:
        profiler = cProfile.Profile()

        def start(signum: int, frame: object) -> None:
            profiler.enable()

        def stop(signum: int, frame: object) -> None:
            profiler.disable()
            profiler.dump_stats(profile_path)

        signal.signal(signal.SIGUSR1, start)
        signal.signal(signal.SIGUSR2, stop)
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
