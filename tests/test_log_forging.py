"""What came from outside cannot write lines of its own into the log."""

import logging
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest
from django.conf import settings

from voicebot.log import EscapingFormatter

from .servers import daphne

FORGED = "CAx\n2026-01-01 00:00:00,000 ERROR calls.services: FORGED\r\x1b[2J"
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


@pytest.mark.django_db(transaction=True)
def test_an_unsigned_webhook_cannot_forge_a_log_line(tmp_path):
    log_path = tmp_path / "daphne.log"
    with daphne(log_path) as base_url:
        body = urllib.parse.urlencode({"CallSid": FORGED, "From": "+14155550123"}).encode()
        request = urllib.request.Request(f"{base_url}/twilio/voice/incoming", data=body)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
    lines = log_path.read_text().splitlines()
    [rejected] = [line for line in lines if "Rejected a missing signature" in line]
    assert "(CallSid CAx\\n2026-01-01 00:00:00,000 ERROR calls.services: FORGED\\r\\x1b[2J)" in (
        rejected
    )
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert [line for line in lines if "FORGED" in line] == [rejected]
    assert "\x1b" not in log_path.read_text()


def forged_failure() -> logging.LogRecord:
    """A warning logged with the traceback of an error whose text came from outside."""
    try:
        raise ValueError(f"unknown CallSid {FORGED}")
    except ValueError:
        return logging.LogRecord(
            "calls.views", logging.WARNING, __file__, 1, "Bad %s", (FORGED,), sys.exc_info()
        )


def test_a_traceback_stays_inside_its_record():
    formatter = EscapingFormatter(settings.LOGGING["formatters"]["plain"]["format"])
    lines = formatter.format(forged_failure()).split("\n")
    assert RECORD_START.match(lines[0]) and "FORGED" in lines[0]
    assert len(lines) > 3 and all(line.startswith("    ") for line in lines[1:])
    # The exception's own newline stays a line break, indented like the rest of the traceback.
    assert lines[-2:] == [
        "    ValueError: unknown CallSid CAx",
        "    2026-01-01 00:00:00,000 ERROR calls.services: FORGED\\r\\x1b[2J",
    ]
    assert sum(bool(RECORD_START.match(line)) for line in lines) == 1
