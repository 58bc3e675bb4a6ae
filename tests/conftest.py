import pytest

from agents.models import Agent, TransferTarget


@pytest.fixture
def agent(db) -> Agent:
    agent = Agent.objects.create(
        name="Front desk", phone_number="+14155550100", greeting="Hello, how can I help?"
    )
    TransferTarget.objects.create(
        agent=agent, name="reception", phone_number="+14155550199", is_default=True
    )
    return agent
