"""Request bodies before the handlers see them: the size limit, the JSON content type, and one-line messages
for what is wrong with a body (not JSON, not UTF-8, empty, not an object, a field out of range).

Every POST endpoint takes a JSON object sent with ``Content-Type: application/json`` (or another
``application/*+json`` type, as FastAPI reads them). Any other content type, or none, is refused with 415 and
named, whatever the body holds, by one app-wide dependency (:func:`json_content_type`), so that every POST
endpoint, present and future, answers alike.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


def validation_message(exc: RequestValidationError) -> str:
    """The first validation error as one line: what is wrong with the body as a whole, or where and what."""
    e = exc.errors()[0]
    whole = _body_message(exc)
    if whole is not None:
        return whole
    where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query")) or "request"
    text = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{where}: {text}" if where != "request" else text


def _body_message(exc: RequestValidationError) -> str | None:
    """What is wrong with the body as a whole (not JSON, empty, not an object), in words; else ``None``."""
    e = exc.errors()[0]
    if e.get("type") == "json_invalid":
        doc, pos = exc.body, e["loc"][-1]
        where = ""
        if isinstance(doc, str) and isinstance(pos, int):
            line, column = doc.count("\n", 0, pos) + 1, pos - doc.rfind("\n", 0, pos)  # both from 1
            where = f" at line {line}, column {column}"
        reason = e.get("ctx", {}).get("error", "it cannot be parsed")
        return f"the request body is not valid JSON: {reason}{where}; send one JSON object"
    if tuple(e.get("loc", ())) != ("body",):
        return None
    if e.get("type") == "missing":
        return "the request body is empty; send a JSON object of the fields this endpoint takes"
    if e.get("type") in ("model_attributes_type", "model_type", "dict_type"):
        kind = {list: "a list", str: "a string", bool: "true or false", type(None): "null"}.get(
            type(e.get("input")), "a number"
        )
        return f"the request body must be a JSON object ({{...}} of named fields), not {kind}"
    return None


def json_content_type(request: Request) -> None:
    """Refuses a POST body not sent as JSON (415), whatever it holds: every POST endpoint takes JSON."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    value = request.headers.get("content-type", "")
    media = value.split(";")[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    got = f"Content-Type {value[:100]}" if value else "no Content-Type header"
    raise HTTPException(
        415, f"send the body as JSON with the header Content-Type: application/json (this request has {got})"
    )


def parse_error(exc: StarletteHTTPException) -> str | None:
    """Why FastAPI could not parse a body, in words (its own message, "There was an error parsing the body",
    hides the cause); ``None`` if it is not such an error."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"the request body is not UTF-8 text (byte {cause.start}); send JSON encoded as UTF-8"
    return None


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, before any of it is parsed.

    A declared ``Content-Length`` is checked at once; a chunked body is read up to the limit and then handed on.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = JSONResponse(
            {"error": f"the request body is larger than {self.limit} bytes"}, status_code=413
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                return await too_large(scope, receive, send)
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await too_large(scope, receive, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return await self.app(scope, replay, send)
