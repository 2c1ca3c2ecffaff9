"""The emulator's answers: a response value and the canned bodies of its errors."""

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Response:
    """One answer: status, body and headers, sent after `delay` seconds; `reset` drops the connection instead."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False


def json_response(status: int, payload: object, **headers: str) -> Response:
    """A JSON answer."""
    return Response(status, json.dumps(payload).encode(), headers=headers)


def throttled(wait: float) -> Response:
    """The documented 429: whole seconds in the detail text and in Retry-After."""
    seconds = max(1, math.ceil(wait))
    detail = f"Request was throttled. Expected available in {seconds} seconds."
    return json_response(429, {"detail": detail, "code": "throttled"}, **{"Retry-After": str(seconds)})


NOT_FOUND = json_response(404, {"detail": "Not found."})
RESET = Response(0, b"", reset=True)
# A proxy in front of the API answers 502/503/504 in HTML, so the client must cope with a body that is not JSON.
INJECTED: Mapping[int, Response] = {
    500: json_response(500, {"detail": "A server error occurred."}),
    502: Response(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    503: Response(503, b"<html><body><h1>503 Service Unavailable</h1></body></html>", "text/html"),
}
GATEWAY_TIMEOUT = Response(504, b"<html><body><h1>504 Gateway Time-out</h1></body></html>", "text/html")
