"""TwiML documents, built with the twilio library so they are always well formed."""

from twilio.twiml.voice_response import Connect, Dial, VoiceResponse

from . import security

UNROUTED_MESSAGE = (
    "Sorry, this number is not taking calls right now. Please try again later. Goodbye."
)
# Twilio refuses inline TwiML longer than this in a call update.
INLINE_TWIML_MAX_CHARS = 4000


def connect_stream(*, token: str) -> str:
    """Connect the call's audio to our bidirectional media stream.

    When the stream ends (we close the socket), Twilio requests the `action` URL, which lets us
    record the end and hang up cleanly instead of falling off the end of the document.
    """
    response = VoiceResponse()
    connect = Connect(action=security.public_url("/twilio/voice/connect-action"))
    stream = connect.stream(
        url=security.stream_url(),
        status_callback=security.public_url("/twilio/stream/status"),
        status_callback_method="POST",
    )
    stream.parameter(name=security.STREAM_TOKEN_PARAMETER, value=token)
    response.append(connect)
    return str(response)


def unrouted() -> str:
    response = VoiceResponse()
    response.say(UNROUTED_MESSAGE)
    response.hangup()
    return str(response)


def hangup() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)


def dial(number: str, *, caller_id: str = "", say_first: str = "") -> str:
    """Hand the caller to a person. Used as inline TwiML in a REST call update."""
    response = VoiceResponse()
    if say_first:
        response.say(say_first)
    dial_verb = Dial(
        caller_id=caller_id or None, action=security.public_url("/twilio/voice/dial-action")
    )
    dial_verb.number(number)
    response.append(dial_verb)
    document = str(response)
    if len(document) > INLINE_TWIML_MAX_CHARS:
        raise ValueError(f"TwiML is {len(document)} characters, over Twilio's limit")
    return document
