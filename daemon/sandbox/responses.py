"""The emulator's answers: a response value and the canned bodies of its errors."""

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Response:
    """One answer: status, body and headers, sent after `delay` seconds; `reset` drops the connection instead;
    `trickle` > 0 sends the body a byte at a time, this many seconds apart (over a socket only)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False
    trickle: float = 0.0


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


def echoing(answer: Response, presented: str) -> Response:
    """The answer with the token the client presented written into it (`echo_token`): into every text of a JSON
    body, into any other body, and into a header, as a careless API or proxy might."""
    if not presented or answer.reset:
        return answer
    headers = {**answer.headers, "X-Echo-Authorization": f"UAT {presented}"}
    try:
        payload = json.loads(answer.body) if answer.content_type == "application/json" else None
    except ValueError:
        payload = None
    if payload is None:
        body = answer.body + f" (token UAT {presented})".encode()
    else:
        body = json.dumps(_with_token(payload, presented)).encode()
    return dataclasses.replace(answer, body=body, headers=headers)


def _with_token(value: object, presented: str) -> object:
    if isinstance(value, str):
        return f"{value} (token UAT {presented})"
    if isinstance(value, list):
        return [_with_token(v, presented) for v in value]
    if isinstance(value, dict):
        return {k: _with_token(v, presented) for k, v in value.items()}
    return value
