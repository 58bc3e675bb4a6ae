"""One request to OpenAI's Responses API for JSON that follows a schema (Structured Outputs).

POST {OPENAI_API_BASE_URL}/v1/responses with `text.format` = {"type": "json_schema",
"name", "schema", "strict": true}. The answer's `output` is a list of items; the JSON is the
`output_text` part of the `message` item (a model may refuse instead: a `refusal` part). A
response cut short has `status` "incomplete" with `incomplete_details.reason`.
"""

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

RESPONSES_PATH = "/v1/responses"
# Worth asking again: rate limits, the provider's own errors, the network.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class TextApiError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class StructuredAnswer:
    data: dict[str, Any]
    model: str
    response_id: str


def _error_words(status: int, body: str) -> str:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:300]
    return f"HTTP {status}: {message}"


def _output_json(answer: dict[str, Any]) -> dict[str, Any]:
    if answer.get("status") == "incomplete":
        reason = (answer.get("incomplete_details") or {}).get("reason", "unknown")
        raise TextApiError(f"the answer was cut short ({reason})", retryable=True)
    if answer.get("status") == "failed" or answer.get("error"):
        error = answer.get("error") or {}
        raise TextApiError(f"the model failed: {error.get('message', error)}", retryable=True)
    for item in answer.get("output") or []:
        if item.get("type") != "message":
            continue
        for part in item.get("content") or []:
            if part.get("type") == "refusal":
                raise TextApiError(f"the model refused: {part.get('refusal')}", retryable=False)
            if part.get("type") == "output_text":
                try:
                    data = json.loads(part["text"])
                except (ValueError, KeyError) as error:
                    raise TextApiError(f"the answer is not JSON: {error}", retryable=True) from None
                if not isinstance(data, dict):
                    raise TextApiError("the answer is not a JSON object", retryable=True)
                return data
    raise TextApiError("the answer has no output text", retryable=True)


async def structured_response(
    *,
    base_url: str,
    api_key: str,
    model: str,
    instructions: str,
    text: str,
    schema_name: str,
    schema: dict[str, Any],
    timeout_seconds: float,
) -> StructuredAnswer:
    """Ask `model` about `text`; the answer follows `schema` (strict). Raises TextApiError."""
    body = {
        "model": model,
        "instructions": instructions,
        "input": text,
        "store": False,
        "text": {
            "format": {"type": "json_schema", "name": schema_name, "schema": schema, "strict": True}
        },
    }
    url = base_url.rstrip("/") + RESPONSES_PATH
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_seconds)
        ) as session:
            async with session.post(url, json=body, headers=headers) as response:
                raw = await response.text()
                if response.status != 200:
                    raise TextApiError(
                        _error_words(response.status, raw),
                        retryable=response.status in RETRYABLE_STATUSES,
                    )
    except TimeoutError:
        raise TextApiError(f"no answer within {timeout_seconds:g} s", retryable=True) from None
    except aiohttp.ClientError as error:
        raise TextApiError(f"could not reach {url}: {error}", retryable=True) from None
    try:
        answer = json.loads(raw)
    except ValueError:
        raise TextApiError("the reply is not JSON", retryable=True) from None
    return StructuredAnswer(
        data=_output_json(answer),
        model=str(answer.get("model", model)),
        response_id=str(answer.get("id", "")),
    )
