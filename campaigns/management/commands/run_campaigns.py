"""Run the campaign dialler outside the servers (set CAMPAIGN_DIALLER=false for them)."""

import asyncio
import os
import socket

from django.core.management.base import BaseCommand

from campaigns.dialler import dialler_loop, dialler_pass


class Command(BaseCommand):
    help = (
        "Place running campaigns' calls: settle finished calls, claim due contacts within "
        "calling hours and the concurrency limit, and call them. Any number may run at once."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true", help="One pass, then exit.")

    def handle(self, *args, once: bool = False, **options) -> None:
        holder = f"run_campaigns:{socket.gethostname()}:{os.getpid()}"
        if once:
            placed = asyncio.run(dialler_pass(holder))
            self.stdout.write(f"Placed {placed} calls.")
            return
        self.stdout.write(f"Dialler {holder} running; Ctrl-C to stop.")
        try:
            asyncio.run(dialler_loop(holder))
        except KeyboardInterrupt:
            self.stdout.write("Stopped.")
