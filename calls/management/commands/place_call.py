from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError

from agents.models import Agent
from calls import services


class Command(BaseCommand):
    help = "Have an agent call a number through Twilio (the call then runs like an inbound one)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("to", help="The number to call, in E.164, e.g. +14155550123")
        parser.add_argument(
            "--agent", help="Agent name or id (default: the default agent)", default=None
        )

    def handle(self, *args, to: str, agent: str | None, **options) -> None:
        chosen = self._agent(agent)
        try:
            call = async_to_sync(services.call_place_outbound)(agent=chosen, to_number=to)
        except services.CallControlError as error:
            raise CommandError(str(error)) from error
        placed = f"Placed {call.sid}: {chosen.name} → {call.to_number}"
        self.stdout.write(self.style.SUCCESS(placed))

    def _agent(self, wanted: str | None) -> Agent:
        agents = Agent.objects.active()
        if wanted is None:
            found = agents.filter(is_default=True).first()
        elif wanted.isdigit():
            found = agents.filter(pk=int(wanted)).first()
        else:
            found = agents.filter(name__iexact=wanted).first()
        if found is None:
            names = ", ".join(agents.values_list("name", flat=True)) or "none"
            raise CommandError(f"No active agent {wanted or '(default)'}; active agents: {names}")
        return found
