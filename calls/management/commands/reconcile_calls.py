import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand

from calls import process, services


class Command(BaseCommand):
    help = (
        "Resume or truthfully end ghost calls: calls whose server process died, and calls "
        "left queued or ringing with no stream. One pass, or --loop. Takes the same lease "
        "as the reconciler inside the servers, so only one works at a time."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--loop",
            action="store_true",
            help="Keep reconciling every RECONCILE_INTERVAL_SECONDS until stopped.",
        )

    def handle(self, *args, loop: bool, **options) -> None:
        holder = f"reconcile_calls:{process.holder_name()}"
        if loop:
            self.stdout.write(
                f"Reconciling every {settings.RECONCILE_INTERVAL_SECONDS:g} s (Ctrl-C to stop)."
            )
            try:
                asyncio.run(process.reconcile_loop(holder))
            except KeyboardInterrupt:
                pass
            finally:
                services.reconcile_lease_release(holder=holder)
            return
        outcomes = asyncio.run(services.calls_reconcile(holder=holder))
        services.reconcile_lease_release(holder=holder)
        if outcomes is None:
            self.stdout.write("Another reconciler is working now; nothing done.")
            return
        if not outcomes:
            self.stdout.write(self.style.SUCCESS("No ghost calls."))
            return
        summary = ", ".join(
            f"{count} {outcome.replace('_', ' ')}" for outcome, count in outcomes.items()
        )
        self.stdout.write(self.style.SUCCESS(f"Reconciled: {summary}."))
