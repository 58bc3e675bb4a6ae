"""Regenerate the shipped clips: `python -m agents.assets`."""

from agents.assets import clip_path, render_clips

for name, ms in render_clips().items():
    print(f"{clip_path(name)}: {ms} ms")
