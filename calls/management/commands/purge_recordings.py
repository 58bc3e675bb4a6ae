import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from calls import services


class Command(BaseCommand):
    help = (
        "Delete call recordings older than RECORDING_RETENTION_DAYS, at Twilio and here. "
        "Schedule it daily (cron or a systemd timer). A recording Twilio cannot delete now "
        "is kept and tried again on the next run."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="Override RECORDING_RETENTION_DAYS for this run.",
        )

    def handle(self, *args, days: int | None, **options) -> None:
        if days is None:
            days = settings.RECORDING_RETENTION_DAYS
            if days == 0:
                self.stdout.write("RECORDING_RETENTION_DAYS is 0: recordings are kept.")
                return
        if days < 0:
            raise CommandError("--days must be 0 or more")
        result = asyncio.run(services.recordings_purge(older_than_days=days))
        self.stdout.write(f"Deleted {result.deleted} recording(s) older than {days} day(s).")
        for failure in result.failed:
            self.stderr.write(f"Not deleted (will retry): {failure}")
        if result.failed:
            raise CommandError(f"{len(result.failed)} recording(s) could not be deleted at Twilio")
