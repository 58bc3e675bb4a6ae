"""A fake OpenAI Responses API (POST /v1/responses) on loopback, for the post-call analysis.

It answers as the real service does: bearer auth (401 otherwise), the request's
`text.format` must be a strict `json_schema`, and the answer is a `response` object whose
`output` holds one `message` item with an `output_text` part carrying JSON that follows the
schema. Tests script failures (`fail_next`: that many answers with an error status first)
and read what was asked (`requests`). No Django here.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web

from .ports import free_port

RESPONSES_PATH = "/v1/responses"


def value_for(schema: dict[str, Any], name: str) -> Any:
    """A plausible value of `schema` (the model's answer, deterministic)."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {key: value_for(sub, key) for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [value_for(schema.get("items", {}), name)]
    return {
        "string": f"{name} from the transcript",
        "boolean": True,
        "integer": 1,
        "number": 1.5,
    }.get(kind, None)


def _error(status: int, message: str, kind: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status)


class FakeResponsesServer:
    def __init__(
        self, *, api_key: str = "test-key", summary: str = "The caller asked a question."
    ) -> None:
        self.api_key = api_key
        self.summary = summary
        self.port = 0
        self.requests: list[dict[str, Any]] = []
        self.fail_next = 0
        self.fail_status = 500
        self.refuse = False
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeResponsesServer:
        app = web.Application()
        app.router.add_post(RESPONSES_PATH, self._responses)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeResponsesServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _responses(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error")
        try:
            body = await request.json()
        except ValueError:
            return _error(
                400, "We could not parse the JSON body of your request.", "invalid_request_error"
            )
        self.requests.append(body)
        fmt = (body.get("text") or {}).get("format") or {}
        if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            return _error(
                400, "Missing required parameter: 'text.format.schema'.", "invalid_request_error"
            )
        if not fmt.get("name") or not isinstance(body.get("input"), (str, list)):
            return _error(
                400, "Missing required parameter: 'text.format.name'.", "invalid_request_error"
            )
        if self.fail_next > 0:
            self.fail_next -= 1
            return _error(
                self.fail_status,
                "The server had an error while processing your request.",
                "server_error",
            )
        if self.refuse:
            content = [{"type": "refusal", "refusal": "I can't help with that."}]
        else:
            answer = value_for(fmt["schema"], "answer")
            answer["summary"] = self.summary
            content = [{"type": "output_text", "text": json.dumps(answer), "annotations": []}]
        return web.json_response(
            {
                "id": f"resp_{uuid.uuid4().hex}",
                "object": "response",
                "created_at": int(time.time()),
                "status": "completed",
                "error": None,
                "incomplete_details": None,
                "model": body.get("model", ""),
                "output": [
                    {
                        "type": "message",
                        "id": f"msg_{uuid.uuid4().hex}",
                        "status": "completed",
                        "role": "assistant",
                        "content": content,
                    }
                ],
                "text": {"format": fmt},
                "usage": {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120},
            }
        )
