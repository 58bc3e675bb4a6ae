"""`make bench`: the relay benchmark (Twilio stream <-> our server <-> the Realtime API).

- `bench.relay`: the command (`python -m bench.relay --help`). It builds a temporary database,
  starts the server pinned to core 0 under daphne and uvicorn, drives it from two load
  generator processes on the other core, and prints latency and CPU figures.
- `bench.twilio_side`: Twilio's side, N calls: the signed voice webhook, then a lean
  bidirectional media stream client (50 frames/s, real-time playback, mark echoes, clear),
  the Twilio REST emulator, and a staff dashboard socket on the live feed.
- `bench.model_side`: the model's side: peers.realtime's FakeRealtimeServer with a
  session subclass that stamps every audio frame with a unique key.
- `bench.common`: what they share: frame keys, clocks, /proc readers.
- `bench.serve`: runs a server under cProfile (window only) and/or with a preloaded module.
"""
