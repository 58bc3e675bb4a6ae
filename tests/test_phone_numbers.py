import pytest
from django.core.exceptions import ValidationError

from agents.models import Agent, TransferTarget

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("number", ["+14155550100", "+442071838750", "+33142685300"])
def test_valid_e164_numbers_are_accepted(number):
    agent = Agent(name="A", phone_number=number)
    agent.full_clean()
    agent.save()
    assert str(Agent.objects.get().phone_number) == number


@pytest.mark.parametrize(
    "number", ["4155550100x", "+1415555", "+15555550100", "not a number", "+999123456789"]
)
def test_invalid_numbers_are_rejected(number):
    with pytest.raises(ValidationError) as error:
        Agent(name="A", phone_number=number).full_clean()
    assert "phone_number" in error.value.message_dict


def test_numbers_are_stored_in_e164():
    agent = Agent(name="A", phone_number="+1 (415) 555-0100")
    agent.full_clean()
    agent.save()
    assert Agent.objects.filter(phone_number="+14155550100").exists()


def test_an_agent_number_is_unique(agent):
    with pytest.raises(ValidationError):
        Agent(name="Other", phone_number="+14155550100").full_clean()


def test_transfer_targets_need_a_valid_number(agent):
    with pytest.raises(ValidationError) as error:
        TransferTarget(agent=agent, name="sales", phone_number="+1415").full_clean()
    assert "phone_number" in error.value.message_dict


def test_transfer_target_names_are_identifiers_the_model_can_pick(agent):
    with pytest.raises(ValidationError) as error:
        TransferTarget(agent=agent, name="Sales Desk!", phone_number="+14155550111").full_clean()
    assert "name" in error.value.message_dict
