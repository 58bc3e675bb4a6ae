import logging

import pytest
from django.test import override_settings

from calls import security
from calls.models import Call

from .twilio_helpers import incoming_params, new_call_sid, signed_post

pytestmark = pytest.mark.django_db

PATH = "/twilio/voice/incoming"


def test_it_accepts_a_correctly_signed_webhook(client, agent):
    response = signed_post(client, PATH, incoming_params(new_call_sid(), "+14155550100"))
    assert response.status_code == 200
    assert Call.objects.count() == 1


def test_it_rejects_a_missing_signature_and_logs_it(client, agent, caplog):
    with caplog.at_level(logging.WARNING, logger="calls.views"):
        response = client.post(PATH, incoming_params(new_call_sid(), "+14155550100"))
    assert response.status_code == 403
    assert Call.objects.count() == 0
    assert "missing signature" in caplog.text


def test_it_rejects_a_tampered_body(client, agent, caplog):
    params = incoming_params(new_call_sid(), "+14155550100")
    signature = security.compute_signature(security.public_url(PATH), params)
    params["From"] = "+19995550000"
    with caplog.at_level(logging.WARNING, logger="calls.views"):
        response = client.post(PATH, params, HTTP_X_TWILIO_SIGNATURE=signature)
    assert response.status_code == 403
    assert "wrong signature" in caplog.text


def test_it_rejects_a_signature_made_for_another_url(client, agent):
    # Signed for the internal address rather than the public one Twilio used.
    params = incoming_params(new_call_sid(), "+14155550100")
    response = signed_post(client, PATH, params, url="http://127.0.0.1:8000" + PATH)
    assert response.status_code == 403


def test_it_rejects_a_signature_made_with_another_token(client, agent):
    params = incoming_params(new_call_sid(), "+14155550100")
    with override_settings(TWILIO_AUTH_TOKEN="someone-elses-token"):
        signature = security.compute_signature(security.public_url(PATH), params)
    response = client.post(PATH, params, HTTP_X_TWILIO_SIGNATURE=signature)
    assert response.status_code == 403


def test_the_signature_covers_the_query_string(client, agent):
    params = incoming_params(new_call_sid(), "+14155550100")
    signature = security.compute_signature(security.public_url(PATH), params)
    response = client.post(PATH + "?x=1", params, HTTP_X_TWILIO_SIGNATURE=signature)
    assert response.status_code == 403


@pytest.mark.parametrize(
    "path",
    [
        "/twilio/voice/status",
        "/twilio/stream/status",
        "/twilio/voice/dial-action",
        "/twilio/voice/connect-action",
    ],
)
def test_every_twilio_endpoint_checks_the_signature(client, path):
    assert client.post(path, {"CallSid": new_call_sid()}).status_code == 403


def test_webhooks_only_accept_post(client):
    assert client.get(PATH).status_code == 405


@override_settings(TWILIO_SKIP_SIGNATURE_VALIDATION=True)
def test_the_development_bypass_warns_on_every_request(client, agent, caplog):
    with caplog.at_level(logging.WARNING, logger="calls.views"):
        client.post(PATH, incoming_params(new_call_sid(), "+14155550100"))
        client.post(PATH, incoming_params(new_call_sid(), "+14155550100"))
    assert caplog.text.count("Signature check is OFF") == 2
    assert Call.objects.count() == 2
