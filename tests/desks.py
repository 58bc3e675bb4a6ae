"""Agents told apart by desk number, for tests that move several calls between processes:
each model session says which call (desk) it serves, and whether it greeted again."""

GREETING_TEXT = "Hello, this is the front desk."


def desk_of(session) -> int:
    return int(session.config["instructions"].split("number ")[1].rstrip("."))


def greetings(session) -> int:
    return sum(
        1
        for e in session.client_events
        if e["type"] == "response.create"
        and GREETING_TEXT in (e.get("response") or {}).get("instructions", "")
    )
