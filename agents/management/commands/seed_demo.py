from django.conf import settings
from django.core.management.base import BaseCommand

from agents.models import Agent, Backend, TransferTarget

DEMO_NUMBER = "+14155550100"
DEMO_TARGET_NUMBER = "+14155550199"


class Command(BaseCommand):
    help = "Create a demo agent with one transfer target, if there are no agents yet."

    def handle(self, *args, **options) -> None:
        if Agent.objects.exists():
            self.stdout.write("Agents exist; demo agent not needed.")
            return
        # Without an OpenAI key the demo still talks, through the offline development backend.
        backend = Backend.OPENAI_REALTIME if settings.OPENAI_API_KEY else Backend.LOCAL
        agent = Agent.objects.create(
            name="Demo receptionist",
            phone_number=DEMO_NUMBER,
            is_default=True,
            greeting="Hello, you have reached the voicebot demo. How can I help you today?",
            backend=backend,
        )
        TransferTarget.objects.create(
            agent=agent,
            name="front_desk",
            phone_number=DEMO_TARGET_NUMBER,
            description="A person at the front desk, for anything the agent cannot do.",
            is_default=True,
        )
        self.stdout.write(
            self.style.SUCCESS(f"Created {agent} ({agent.get_backend_display()}) → front_desk")
        )
