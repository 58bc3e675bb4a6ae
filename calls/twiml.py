"""TwiML documents, built with the twilio library so they are always well formed."""

from twilio.twiml.voice_response import Connect, Dial, Gather, VoiceResponse

from . import security

UNROUTED_MESSAGE = (
    "Sorry, this number is not taking calls right now. Please try again later. Goodbye."
)
# Twilio refuses inline TwiML longer than this in a call update.
INLINE_TWIML_MAX_CHARS = 4000


def connect_stream(*, token: str, parameters: dict[str, str] | None = None) -> str:
    """Connect the call's audio to our bidirectional media stream.

    When the stream ends (we close the socket), Twilio requests the `action` URL, which lets us
    record the end and hang up cleanly instead of falling off the end of the document.
    `parameters` are extra <Parameter>s the stream's `start` carries back (e.g. why the call
    is resumed).
    """
    response = VoiceResponse()
    connect = Connect(action=security.public_url("/twilio/voice/connect-action"))
    stream = connect.stream(
        url=security.stream_url(),
        status_callback=security.public_url("/twilio/stream/status"),
        status_callback_method="POST",
    )
    stream.parameter(name=security.STREAM_TOKEN_PARAMETER, value=token)
    for name, value in (parameters or {}).items():
        stream.parameter(name=name, value=value)
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


def _within_inline_limit(document: str) -> str:
    if len(document) > INLINE_TWIML_MAX_CHARS:
        raise ValueError(f"TwiML is {len(document)} characters, over Twilio's limit")
    return document


def dial(number: str, *, caller_id: str = "", say_first: str = "") -> str:
    """Hand the caller to a person (a cold transfer). Inline TwiML for a REST call update."""
    response = VoiceResponse()
    if say_first:
        response.say(say_first)
    dial_verb = Dial(
        caller_id=caller_id or None, action=security.public_url("/twilio/voice/dial-action")
    )
    dial_verb.number(number)
    response.append(dial_verb)
    return _within_inline_limit(str(response))


def dial_warm(number: str, *, call_id: str, caller_id: str = "") -> str:
    """A warm transfer: the person called first hears the whisper and accepts with a key.

    `<Number url>` is run for the person called, after they answer and before the legs are
    bridged (docs/twilio-rest.md#warm-transfer); `<Dial action>` then tells us how it went,
    and answers with a way back to the agent unless the person took the call.
    """
    query = f"?call={call_id}"
    response = VoiceResponse()
    dial_verb = Dial(
        caller_id=caller_id or None,
        action=security.public_url("/twilio/voice/dial-result" + query),
    )
    dial_verb.number(number, url=security.public_url("/twilio/voice/whisper" + query))
    response.append(dial_verb)
    return _within_inline_limit(str(response))


# How long the person called has to press a key after the whisper, in seconds.
WHISPER_ANSWER_TIMEOUT_S = 8
WHISPER_ACCEPT_DIGIT = "1"


def whisper(*, call_id: str, announcement: str) -> str:
    """For the person called in a warm transfer: who is coming, then press 1 to accept.

    No key (or another key) hangs up their leg, so their voicemail cannot take the caller.
    """
    response = VoiceResponse()
    gather = Gather(
        num_digits=1,
        timeout=WHISPER_ANSWER_TIMEOUT_S,
        action=security.public_url(f"/twilio/voice/whisper-answer?call={call_id}"),
        method="POST",
    )
    gather.say(announcement)
    gather.say(f"Press {WHISPER_ACCEPT_DIGIT} to take the call, or hang up to send it back.")
    response.append(gather)
    response.hangup()
    return _within_inline_limit(str(response))


def whisper_accepted() -> str:
    """An empty document: the whisper is over and Twilio bridges the two legs."""
    return str(VoiceResponse())
