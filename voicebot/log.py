"""Log records that cannot forge other records.

Much of what we log came from outside: a CallSid, a URL, a user name, a model's words. A
newline in one of them would start a line of its own in the log, one that can read as any
record an attacker likes. The formatter escapes every control character in the message
(`\\n` is written as the two characters backslash and n), so a record's message is always
one line; the lines of a traceback that follow it are indented, so a line that starts at
the left margin always starts a record.
"""

import logging

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0 controls and DEL, C1 controls, and Unicode's own line and paragraph separators.
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_ESCAPES = {
    code: _NAMED.get(chr(code)) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in _CONTROLS
}
CONTINUATION_INDENT = "    "


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape sequence."""
    return text.translate(_ESCAPES)


class EscapingFormatter(logging.Formatter):
    """A Formatter whose records are one line each, plus indented traceback lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # `format` sets record.message from msg % args just before; escape what came of it.
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        first, newline, rest = text.partition("\n")
        if not newline:
            return first
        # What follows the message is the traceback or stack, which has real newlines; an
        # exception's text may have come from outside too, so no line of it may start a record.
        lines = [CONTINUATION_INDENT + escape_controls(line) for line in rest.split("\n")]
        return "\n".join([first, *lines])

