"""Per-call variables in an agent's texts: "Hello {first_name}" with the contact's name.

Only `{name}` placeholders whose name is a plain identifier are touched: no attribute or
index lookups and no format specs, so a value or a prompt can never reach into Python
objects (str.format would). A placeholder with no value is left as it is, visible in the
text, and reported so staff can see it; `{{` and `}}` stand for literal braces.
"""

import re

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")


def placeholders(text: str) -> set[str]:
    """The variable names `text` uses."""
    return {match[1] for match in PLACEHOLDER.finditer(text) if match[1]}


def prompt_fill(text: str, variables: dict[str, str]) -> tuple[str, set[str]]:
    """`text` with its placeholders replaced; and the names that had no value (left as is)."""
    missing: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        token, name = match[0], match[1]
        if name is None:
            return token[0]  # "{{" -> "{", "}}" -> "}"
        if name in variables:
            return str(variables[name])
        missing.add(name)
        return token

    return PLACEHOLDER.sub(replace, text), missing
