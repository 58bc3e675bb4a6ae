"""The agent's admin page: a form that explains itself, and "Test this agent"."""

import time

import pytest
from django.contrib.auth.models import Permission, User

from agents.models import Agent, AnsweringMachine, Backend
from calls.models import Call, TranscriptEntry

from .dashboard_helpers import make_staff

pytest_plugins = ["tests.agent_harness"]  # asgi_server

GREETING = "Hello, this is the test line."


@pytest.fixture
def boss(db) -> User:
    return User.objects.create_superuser("boss", password="a-long-test-password")


def agent_form_data(**overrides) -> dict:
    data = {
        "name": "Front desk",
        "phone_number": "+14155550100",
        "is_active": "on",
        "instructions": "Be brief.",
        "greeting": "Hello.\nHow can I help?",
        "voice": "marin",
        "model": "gpt-realtime",
        "backend": Backend.OPENAI_REALTIME,
        "transfer_digit": "0",
        "max_call_seconds": "900",
        "idle_timeout_seconds": "30",
        "answering_machine": AnsweringMachine.OFF,
        "analysis_schema": "{}",
        "transfer_targets-TOTAL_FORMS": "0",
        "transfer_targets-INITIAL_FORMS": "0",
        "transfer_targets-MIN_NUM_FORMS": "0",
        "transfer_targets-MAX_NUM_FORMS": "1000",
        **overrides,
    }
    return data


def test_the_greeting_is_a_multi_line_field_and_voice_and_model_say_whom_they_serve(
    client, boss
):
    client.force_login(boss)
    page = client.get("/admin/agents/agent/add/").content.decode()
    assert '<textarea name="greeting"' in page
    assert page.count("Local backend ignores it") == 2


@pytest.mark.django_db
def test_saving_an_openai_agent_without_a_key_warns(client, boss, settings):
    settings.OPENAI_API_KEY = ""
    client.force_login(boss)
    response = client.post("/admin/agents/agent/add/", agent_form_data(), follow=True)
    assert Agent.objects.filter(name="Front desk").exists()
    assert "OPENAI_API_KEY is not set" in response.content.decode()

    # A local agent needs no key; with the key set, nothing to warn about.
    data = agent_form_data(name="Local", phone_number="+14155550102", backend=Backend.LOCAL)
    response = client.post("/admin/agents/agent/add/", data, follow=True)
    assert "OPENAI_API_KEY" not in response.content.decode()
    settings.OPENAI_API_KEY = "sk-test"
    data = agent_form_data(name="Sales", phone_number="+14155550101")
    response = client.post("/admin/agents/agent/add/", data, follow=True)
    assert "OPENAI_API_KEY is not set" not in response.content.decode()


@pytest.mark.django_db
def test_the_test_button_is_shown_to_staff_who_may_place_calls(client):
    agent = Agent.objects.create(name="Front desk", phone_number="+14155550100")
    viewer = make_staff("viewer", "view_call")
    viewer.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_agent", "change_agent"])
    )
    client.force_login(viewer)
    page = client.get(f"/admin/agents/agent/{agent.pk}/change/").content.decode()
    assert "Test this agent" not in page
    client.force_login(User.objects.create_superuser("boss", password="a-long-test-password"))
    page = client.get(f"/admin/agents/agent/{agent.pk}/change/").content.decode()
    assert "Test this agent" in page


@pytest.mark.django_db(transaction=True)
def test_testing_an_agent_runs_a_simulated_call_and_shows_what_happened(
    client, asgi_server, settings
):
    settings.TWILIO_API_BASE_URL = "http://127.0.0.1:1"  # nothing there; the emulator takes it
    agent = Agent.objects.create(
        name="Front desk",
        phone_number="+14155550100",
        greeting=GREETING,
        backend=Backend.LOCAL,
        is_default=True,
    )
    client.force_login(User.objects.create_superuser("boss", password="a-long-test-password"))
    host, port = "127.0.0.1", str(asgi_server.port)
    started = client.post(
        f"/admin/calls/call/test-agent/{agent.pk}/", SERVER_NAME=host, SERVER_PORT=port
    )
    assert started.status_code == 302
    progress_url = started["Location"]

    page = client.get(progress_url).content.decode()
    assert "Running: the test call is under way" in page
    assert 'http-equiv="refresh"' in page
    deadline = time.monotonic() + 40
    while "Running" in page and time.monotonic() < deadline:
        time.sleep(0.5)
        page = client.get(progress_url).content.decode()

    assert "Finished." in page and 'http-equiv="refresh"' not in page
    call = Call.objects.get(agent=agent)
    assert call.sid in progress_url
    assert TranscriptEntry.objects.filter(call=call, text=GREETING).exists()
    assert GREETING in page
    assert "The call ended:" in page
    assert "Call answered" in page
