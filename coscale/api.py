"""The HTTP API: a FastAPI app over any :class:`~coscale.runtime.contract.Serving`.

:func:`create_app` builds the app; ``coscale serve`` runs it under uvicorn. The OpenAPI
document is published at ``/openapi.json`` (interactive docs at ``/docs``).

Endpoints
---------
==================================  =======================================================
``POST /v1/models/{model}/infer``   ``{"inputs": [item, …], "timeout_ms": n?}`` →
                                    ``{"outputs": [output, …]}``, one output per item, in
                                    order
``GET /v1/models``                  models, the variants in use, their replicas
``GET /v1/stats``                   the run summary so far (``?tenant=`` for one tenant)
``GET /healthz``                    200 while the process lives
``GET /readyz``                     200 once every model has a serving replica, else 503
``GET /metrics``                    Prometheus text format 0.0.4, names prefixed ``coscale_``
==================================  =======================================================

Errors
------
Every error, whatever raised it, is a JSON body ``{"error": code, "message": text}``:

=====  ==============================  ===================================================
400    ``malformed_json``              the body is not JSON (position in the message), or
                                       uses NaN/Infinity as numbers
400    ``bad_request``                 unreadable body, bad Content-Length
401    ``unauthorized``                no ``Authorization: Bearer KEY``, or a wrong key
                                       (scenarios with tenants; :mod:`coscale.tenancy`)
403    ``forbidden``                   the key may not see this: another tenant's stats, a
                                       cluster-wide view, or inference with the admin key
404    ``unknown_model``               no such model (the message lists the models)
404    ``not_found``                   no such route
405    ``method_not_allowed``          route exists, method does not (``Allow`` header)
413    ``payload_too_large``           body over :attr:`ApiLimits.max_body_bytes` (checked
                                       on the raw bytes, before parsing), more items than
                                       :attr:`ApiLimits.max_items`, or a string longer than
                                       :attr:`ApiLimits.max_string_chars`
422    ``invalid_request``             the body does not fit the schema; the message names
                                       each field path (``inputs``, ``timeout_ms``, …)
422    ``invalid_input``               an item has the wrong type, shape or range (the
                                       model's own check, naming the item)
429    ``overloaded``                  admission control shed the request; ``Retry-After``
                                       header in whole seconds (≥ 1)
429    ``rate_limited``,               the tenant is over its rate limit or quota
       ``quota_exceeded``              (``Retry-After`` unless the quota is for the run)
502    ``replica_failure``             the batch failed on every replica tried, or its
                                       outputs are not finite (JSON has no NaN)
503    ``not_ready``                   no serving replica yet, or shutting down
504    ``deadline_exceeded``           the deadline passed before the answer
500    ``internal``                    an unexpected exception (logged with its traceback)
=====  ==============================  ===================================================

Limits (:class:`ApiLimits`, defaults in named constants): the body size is enforced by
an ASGI middleware on the raw bytes — a ``Content-Length`` over the limit is refused
before a byte is read, a streamed body as soon as it passes the limit — so an oversized
body is never buffered nor parsed. Items per request and string length are checked
after parsing, before the serving system sees the request. Strings are found at any
depth of an item, except that a list whose first element is a number is taken to be a
numeric leaf and not scanned (the model's own input check rejects a mixed list), which
keeps the check O(items) for tensors.

A JSON answer's ``{"outputs": …}`` is encoded by orjson (:class:`OutputsResponse`): the
same JSON values as the standard library's encoder, 14× faster on the float lists of
embeddings (32 MiniLM rows: 13.3 → 0.9 ms of the event loop per request, measured
here), which on cores shared with the workers is CPU the model gets back.

Everything the app calls on the serving system runs on the event loop thread (the
endpoints are ``async``), so a serving system need not be thread-safe.

The app counts its own traffic in ``coscale_http_requests_total{route,method,status}``
and ``coscale_http_request_duration_seconds{route}`` (the route template, e.g.
``/v1/models/{model}/infer``; ``other`` for unknown paths), appended to ``/metrics``
after the serving system's families and any ``metrics_sources`` (a family two sources
both export is kept once, the first).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import coscale
from coscale.catalog.nodes import NodeType
from coscale.clock import Clock
from coscale.errors import CoscaleError
from coscale.runtime.batcher import loop_scheduler
from coscale.runtime.contract import NotReady, Overloaded, PayloadTooLarge, Serving
from coscale.runtime.heap import freeze_startup_heap
from coscale.runtime.wire import NPY_MEDIA_TYPE, decode_npy, encode_npy, media_type, wants_npy
from coscale.telemetry.prometheus import (
    CONTENT_TYPE,
    LATENCY_BUCKETS_S,
    Registry,
    ServingMetrics,
)
from coscale.telemetry.prometheus import merge_expositions as _merge
from coscale.telemetry.sampler import Sampler
from coscale.telemetry.score import RecordLike, ScoreCollector, reference_energy_per_item

if TYPE_CHECKING:
    from coscale.tenancy import TenantAuth

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_STRING_CHARS",
    "DEFAULT_TENANT",
    "GRACEFUL_SHUTDOWN_S",
    "MAX_TIMEOUT_MS",
    "ApiLimits",
    "LiveTelemetry",
    "bind_socket",
    "create_app",
    "is_loopback",
    "live_telemetry",
    "run_server",
]

log = logging.getLogger(__name__)

#: Largest request body, bytes (8 MiB: ~40,000 digits images or a few 224×224 tensors).
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: Most items in one request (the largest max_batch a scenario may set).
DEFAULT_MAX_ITEMS = 1024
#: Longest string anywhere in an item, characters (text models truncate far sooner).
DEFAULT_MAX_STRING_CHARS = 10_000
#: Largest ``timeout_ms`` a request may ask for (10 minutes).
MAX_TIMEOUT_MS = 600_000.0
#: Tenant of a request when the app has no ``tenant_of`` (anonymous serving).
DEFAULT_TENANT = "default"
#: ``request.state`` key: ``time.perf_counter()`` when the request reached the app (set by
#: :class:`CatchAllMiddleware`; the data plane counts deadlines from then).
RECEIVED_STATE = "coscale_received"
#: Methods whose body the size limit reads.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """Request limits; each must be ≥ 1 (module docstring for where each is checked)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_items: int = DEFAULT_MAX_ITEMS
    max_string_chars: int = DEFAULT_MAX_STRING_CHARS

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_items", "max_string_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise CoscaleError(
                    f"API limit {name} must be an integer >= 1, got {value!r}.",
                    fix=f"set {name} to a positive integer.",
                    code="invalid_input",
                )


# --------------------------------------------------------------------------- schemas


class _Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InferRequest(_Forbid):
    """Inputs to one model, answered together."""

    inputs: list[Any] = Field(
        min_length=1,
        description="Items, at least one: digits-cnn takes 64 numbers in [0, 16] (an 8×8 "
        "image, flat or as 8 lists of 8); minilm takes strings; a model file takes nested "
        "lists matching its input shape (without the batch axis).",
    )
    timeout_ms: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TIMEOUT_MS,
        description="Answer within this many milliseconds or fail with 504 "
        f"(0 < timeout_ms <= {MAX_TIMEOUT_MS:g}); default: the model's deadline policy.",
    )


class InferResponse(BaseModel):
    """One output per input item, in order."""

    outputs: list[dict[str, Any]] = Field(
        description='digits-cnn: {"label": int, "probabilities": [10 floats]}; minilm: '
        '{"embedding": [384 floats]}; a model file: {"output": nested lists}.'
    )


class ErrorBody(BaseModel):
    """Every error response."""

    error: str = Field(description="Stable machine-readable code, e.g. unknown_model.")
    message: str = Field(description="What went wrong and how to fix it.")


class StatusBody(BaseModel):
    status: str = Field(description='"ok" (healthz) or "ready" (readyz).')


class ReplicaInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(description="Replica id.")
    variant: str = Field(description="Model variant the replica runs.")
    node_type: str = Field(description="Node type (catalog name) the replica stands for.")
    state: str = Field(description="starting, ready, draining or stopped.")


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Name the model is served under (the URL's {model}).")
    source: str = Field(description="Built-in model name or model file path.")
    variants: list[str] = Field(description="Variants in use.")
    replicas: list[ReplicaInfo] = Field(description="Replicas of this model.")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class LatencyBody(BaseModel):
    p50: float
    p90: float
    p99: float
    mean: float


class StatsResponse(BaseModel):
    """The run summary so far (DESIGN.md contract); extra keys may follow."""

    model_config = ConfigDict(extra="allow")

    requests: int
    completed: int
    failed: int
    rejected: int
    lost: int = Field(description="Accepted and never answered; must be 0.")
    latency_ms: LatencyBody
    throughput_rps: float
    makespan_s: float
    cost_usd: float
    energy_j: float
    slo_attainment: float
    reliability: float
    preset: str
    scenario: str


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    words = {
        400: "Malformed JSON or unreadable body.",
        401: "No API key, or a wrong one (scenarios with tenants; WWW-Authenticate: Bearer).",
        403: "The key may not see this (another tenant's stats, a cluster-wide view).",
        404: "No such model.",
        413: "Body, item count or a string over the limit.",
        422: "The body or an item is invalid; the message names the field or item.",
        429: "Overloaded, or over the tenant's rate limit or quota: retry after the "
        "Retry-After header's seconds.",
        502: "The batch failed on every replica tried.",
        503: "Not ready, or shutting down.",
        504: "The deadline passed before the answer.",
    }
    return {s: {"model": ErrorBody, "description": words[s]} for s in statuses}


class OutputsResponse(Response):
    """A JSON response encoded by orjson (module docstring). Python floats are written
    in their shortest round-trip form, as ``json.dumps`` writes them, so a client reads
    the same numbers; a float that is not finite would be written as ``null``, so the
    data plane fails a JSON answer with non-finite outputs before it gets here."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


# --------------------------------------------------------------------------- errors


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def retry_after_seconds(retry_after_s: float) -> int:
    """``Retry-After`` header value: whole seconds, rounded up, at least 1."""
    if not math.isfinite(retry_after_s):
        return 1
    return max(1, math.ceil(retry_after_s))


def _coscale_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CoscaleError)
    headers = None
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": str(retry_after_seconds(exc.retry_after_s))}
    return _error(exc.http_status, exc.code, exc.render(), headers)


def _field_path(loc: Sequence[Any]) -> str:
    """``("body", "inputs", 3)`` → ``inputs[3]``; ``("query", "tenant")`` → ``query.tenant``."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _validation_message(err: dict[str, Any]) -> str:
    from coscale.config import suggest

    path = _field_path(err.get("loc", ()))
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        name = str(err["loc"][-1])
        fields = list(InferRequest.model_fields)
        return (
            f"{path}: unknown field {name!r}{suggest(name, fields)} (fields: {', '.join(fields)})"
        )
    if kind == "missing":
        if path == "body":
            return 'the request has no body; send a JSON object such as {"inputs": [...]}'
        return f"{path}: required field is missing"
    if path == "body" and kind in ("model_attributes_type", "dict_type", "model_type"):
        return (
            'body: expected a JSON object such as {"inputs": [...]} '
            "(with Content-Type: application/json)"
        )
    msg = str(err.get("msg", "invalid"))
    return f"{path}: {msg[:1].lower()}{msg[1:]}"


def _request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    bad_json = [e for e in errors if e.get("type") == "json_invalid"]
    if bad_json:
        err = bad_json[0]
        where = err.get("loc", ("body", 0))
        position = where[1] if len(where) > 1 else 0
        reason = (err.get("ctx") or {}).get("error", "invalid JSON")
        return _error(
            400,
            "malformed_json",
            f"the request body is not valid JSON: {reason} at character {position}. "
            'Send a JSON object such as {"inputs": [...]} with Content-Type: application/json.',
        )
    shown = [_validation_message(e) for e in errors[:10]]
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return _error(422, "invalid_request", "invalid request: " + "; ".join(shown) + more)


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = _HTTP_CODES.get(status, f"http_{status}")
    if status == 404:
        message = f"no route {request.method} {request.url.path}; see /openapi.json."
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}."
    else:
        message = str(exc.detail)
    return _error(status, code, message, dict(exc.headers or {}) or None)


async def _send_json(send: Send, status: int, body: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def non_json_constant(body: bytes) -> str | None:
    """``NaN``, ``Infinity`` or ``-Infinity`` if the body uses one as a number, else None.

    Python's JSON parser accepts these, but they are not JSON (RFC 8259) and a model fed
    NaN answers NaN, which cannot be sent back as JSON. A substring search (C speed)
    finds candidates; only then is the body parsed to tell a number from text in a string.
    """
    if b"NaN" not in body and b"Infinity" not in body:
        return None
    try:
        json.loads(body, parse_constant=_reject_constant)
    except ValueError as exc:
        if str(exc) in ("NaN", "Infinity", "-Infinity"):
            return str(exc)
    return None


class BodyLimitMiddleware:
    """Refuse a body over ``max_bytes`` on its raw length, before anything parses it; and
    one that uses ``NaN``/``Infinity`` as numbers (not JSON), as malformed JSON."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                await _send_json(
                    send,
                    400,
                    {"error": "bad_request", "message": "Content-Length is not a number >= 0."},
                )
                return
            if length > self.max_bytes:
                await self._too_large(send, length)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send, None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        binary = media_type(content_type) == NPY_MEDIA_TYPE
        constant = None if binary else non_json_constant(body)
        if constant is not None:
            await _send_json(
                send,
                400,
                {
                    "error": "malformed_json",
                    "message": f"the request body is not valid JSON: {constant} is not a JSON "
                    "number (JSON has no NaN or infinities). Send finite numbers.",
                },
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, length: int | None) -> None:
        size = f"{length:,} bytes" if length is not None else "more than the limit"
        await _send_json(
            send,
            413,
            {
                "error": "payload_too_large",
                "message": f"the request body is {size}; the limit is {self.max_bytes:,} "
                "bytes. Send fewer items per request.",
            },
        )


class CatchAllMiddleware:
    """Turn any unhandled exception into a 500 JSON body (logged), and count every response.

    Sits inside Starlette's ServerErrorMiddleware (which would answer in plain text) and
    outside the routing, so it sees every request, including unknown routes.
    """

    def __init__(self, app: ASGIApp, metrics: _HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope.setdefault("state", {})[RECEIVED_STATE] = started
        status = 0

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if status:
                raise  # the response has begun: nothing sane to send
            status = 500
            await _send_json(
                send,
                500,
                {
                    "error": "internal",
                    "message": "internal server error; it has been logged. Retry, and report "
                    "it if it persists.",
                },
            )
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "other"
            self.metrics.observe(template, scope.get("method", ""), status, started)


class _HttpMetrics:
    """``coscale_http_requests_total`` and ``coscale_http_request_duration_seconds``."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.requests = self.registry.counter(
            "coscale_http_requests_total",
            "HTTP responses by route template, method and status code.",
            ("route", "method", "status"),
        )
        self.duration = self.registry.histogram(
            "coscale_http_request_duration_seconds",
            "Time from the request reaching the app to the end of its handling, seconds.",
            ("route",),
            buckets=LATENCY_BUCKETS_S,
        )

    def observe(self, route: str, method: str, status: int, started: float) -> None:
        self.requests.inc(route=route, method=method, status=status or 0)
        self.duration.observe(time.perf_counter() - started, route=route)


# --------------------------------------------------------------------------- limits


def _longest_string(item: Any) -> int:
    """Length of the longest string in ``item`` (see the module docstring's scan rule)."""
    longest = 0
    stack = [item]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            longest = max(longest, len(value))
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list) and value:
            first = value[0]
            if isinstance(first, int | float) and not isinstance(first, bool):
                continue
            stack.extend(value)
    return longest


def check_limits(inputs: Sequence[Any], limits: ApiLimits) -> None:
    """Raise :class:`PayloadTooLarge` for too many items or a string over the limit."""
    _check_item_count(len(inputs), limits)
    for index, item in enumerate(inputs):
        _check_string_length(index, _longest_string(item), limits)


def _check_string_length(index: int, longest: int, limits: ApiLimits) -> None:
    if longest > limits.max_string_chars:
        raise PayloadTooLarge(
            f"inputs[{index}]: item {index} holds a string of {longest:,} characters; "
            f"the limit is {limits.max_string_chars:,}.",
            fix="Shorten or split the text.",
        )


def _check_item_count(count: int, limits: ApiLimits) -> None:
    if count > limits.max_items:
        raise PayloadTooLarge(
            f"inputs: the request has {count:,} items; the limit is {limits.max_items:,} "
            "per request.",
            fix="Split the items over several requests.",
        )


def check_array_limits(array: np.ndarray, limits: ApiLimits) -> None:
    """:func:`check_limits` for a binary request: items are the rows of the first axis;
    strings (``<U`` arrays) are measured in one vectorized pass."""
    _check_item_count(len(array), limits)
    if array.dtype.kind == "U" and array.size:
        lengths = np.char.str_len(array).reshape(len(array), -1).max(axis=1)
        index = int(np.argmax(lengths))
        _check_string_length(index, int(lengths[index]), limits)


def parse_infer_json(body: bytes, kind: str = "application/json") -> InferRequest:
    """The JSON body of an inference request, validated against :class:`InferRequest`.

    Errors read as FastAPI's own would: an empty body is a missing ``body``; a media type
    ``kind`` that is neither absent nor JSON (``application/json``, ``…+json``) is a body
    that is not a JSON object; text that is not JSON (or not UTF-8) is ``malformed_json``
    with the character position; a schema mismatch is a :class:`RequestValidationError`
    whose locations start with ``body``.
    """
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise RequestValidationError([{"type": "model_type", "loc": ("body",), "msg": kind}])
    if not body.strip():
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "missing"}])
    try:
        return InferRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise RequestValidationError([_json_error(body)]) from None
        located = [{**e, "loc": ("body", *e["loc"])} for e in errors]
        raise RequestValidationError(located) from None


def _json_error(body: bytes) -> dict[str, Any]:
    """A ``json_invalid`` error with the position and reason Python's parser gives."""
    try:
        json.loads(body)
    except UnicodeDecodeError as exc:
        return {"type": "json_invalid", "loc": ("body", exc.start), "ctx": {"error": str(exc)}}
    except ValueError as exc:
        where = getattr(exc, "pos", 0)
        reason = getattr(exc, "msg", str(exc))
        return {"type": "json_invalid", "loc": ("body", where), "ctx": {"error": reason}}
    return {"type": "json_invalid", "loc": ("body", 0), "ctx": {"error": "invalid JSON"}}


#: OpenAPI request body of the infer route: JSON (InferRequest) or one ``.npy`` array.
_INFER_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _publish_infer_request_schema(app: FastAPI) -> None:
    """Add :class:`InferRequest` to the OpenAPI components: the infer route reads its body
    itself (JSON or ``.npy``), so FastAPI does not list the model on its own."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        doc = generate()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("InferRequest", InferRequest.model_json_schema())
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


# --------------------------------------------------------------------------- the app


def _not_ready_models(serving: Serving) -> list[str]:
    try:
        models = serving.models()
    except Exception:
        return []
    names = []
    for m in models:
        replicas = m.get("replicas") or []
        if not any(str(r.get("state", "")).lower() == "ready" for r in replicas):
            names.append(str(m.get("name", "?")))
    return names


def create_app(
    serving: Serving,
    *,
    limits: ApiLimits | None = None,
    metrics_sources: Sequence[Callable[[], str]] = (),
    tenant_of: Callable[[Request], str] | None = None,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    auth: TenantAuth | None = None,
) -> FastAPI:
    """The FastAPI app serving ``serving`` (module docstring).

    ``limits``: request limits (default :class:`ApiLimits`). ``metrics_sources``: extra
    Prometheus expositions appended to ``/metrics`` (the sampler's, the score's).
    ``tenant_of``: the tenant of a request (default: :data:`DEFAULT_TENANT`; an
    authenticating function replaces it). ``lifespan``: start/stop the serving system
    with the server. ``auth``: API keys, rate limits and quotas of the scenario's tenants
    (:mod:`coscale.tenancy`; None: anonymous); it supplies ``tenant_of`` when none is given.
    """
    limits = limits or ApiLimits()
    http_metrics = _HttpMetrics()
    app = FastAPI(
        title="coscale",
        version=coscale.__version__,
        description="Serve AI models on heterogeneous machines. Every error body is "
        '`{"error": code, "message": text}`.',
        lifespan=lifespan,
    )
    app.add_exception_handler(CoscaleError, _coscale_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    if auth is not None:
        from coscale.tenancy import AuthMiddleware

        app.add_middleware(AuthMiddleware, auth=auth, retry_after=retry_after_seconds)
        auth.on_refused = serving.note_refused
        metrics_sources = [*metrics_sources, auth.render]
        tenant_of = tenant_of or auth.tenant_of
    app.add_middleware(CatchAllMiddleware, metrics=http_metrics)
    app.state.serving = serving
    app.state.limits = limits
    app.state.http_metrics = http_metrics

    def tenant(request: Request) -> str:
        return tenant_of(request) if tenant_of is not None else DEFAULT_TENANT

    @app.post(
        "/v1/models/{model}/infer",
        response_model=InferResponse,
        responses={
            200: {"content": {NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
            **_errors(400, 401, 403, 404, 413, 422, 429, 502, 503, 504),
        },
        openapi_extra=_INFER_REQUEST_BODY,
        summary="Run a model on a list of inputs",
    )
    async def infer(
        model: str,
        request: Request,
        timeout_ms: Annotated[
            float | None,
            Query(gt=0, le=MAX_TIMEOUT_MS, description="Timeout of a binary request (ms)."),
        ] = None,
    ) -> Response:
        """One output per input item, in order (batched with other requests' items).

        JSON (``{"inputs": [...]}``) or, with ``Content-Type: application/x-npy``, one array
        with the batch axis first (:mod:`coscale.runtime.wire`); with ``Accept:
        application/x-npy`` the answer is the float32 output rows as one ``.npy`` array.
        """
        body = await request.body()
        kind = media_type(request.headers.get("content-type"))
        if kind == NPY_MEDIA_TYPE:
            items: Any = decode_npy(body)
            check_array_limits(items, limits)
        else:
            parsed = parse_infer_json(body, kind)
            items, timeout_ms = parsed.inputs, parsed.timeout_ms or timeout_ms
            check_limits(items, limits)
        raw = wants_npy(request.headers.get("accept"))
        timeout_s = timeout_ms / 1000.0 if timeout_ms is not None else None
        received = getattr(request.state, RECEIVED_STATE, None)
        waited_s = time.perf_counter() - received if received is not None else 0.0
        outputs = await serving.infer(
            model, items, tenant=tenant(request), timeout_s=timeout_s, raw=raw, waited_s=waited_s
        )
        if raw:
            return Response(encode_npy(outputs), media_type=NPY_MEDIA_TYPE)
        return OutputsResponse({"outputs": outputs})

    _publish_infer_request_schema(app)

    @app.get("/v1/models", response_model=ModelsResponse, summary="Models and their replicas")
    async def models() -> Response:
        return JSONResponse({"models": serving.models()})

    @app.get(
        "/v1/stats",
        response_model=StatsResponse,
        responses=_errors(401, 403),
        summary="The run summary so far",
    )
    async def stats(request: Request, tenant: str | None = None) -> Response:
        """Requests, outcomes, latency percentiles, throughput, cost, energy, SLO attainment
        (with tenants: a tenant's key sees its own; the admin key any tenant's or all)."""
        if auth is not None:
            tenant = auth.stats_tenant(request, tenant)
        return JSONResponse(serving.stats(tenant))

    @app.get("/healthz", response_model=StatusBody, summary="Liveness")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", response_model=StatusBody, responses=_errors(503), summary="Readiness")
    async def readyz() -> Response:
        if serving.ready():
            return JSONResponse({"status": "ready"})
        waiting = _not_ready_models(serving)
        detail = f" (no serving replica yet: {', '.join(waiting)})" if waiting else ""
        raise NotReady(
            f"not ready{detail}: models are still starting, or the server is shutting down.",
            fix="Wait and retry; /healthz tells whether the process is alive.",
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text."},
            **_errors(401, 403),
        },
        summary="Prometheus metrics (with tenants: the admin key only)",
    )
    async def metrics(request: Request) -> Response:
        if auth is not None:
            auth.require_admin(request, "/metrics")
        texts = [serving.metrics_text(), *(source() for source in metrics_sources)]
        texts.append(http_metrics.registry.render())
        return Response(_merge(*texts), media_type=None, headers={"Content-Type": CONTENT_TYPE})

    return app


# --------------------------------------------------------------------------- serving live

#: Seconds uvicorn waits, after SIGTERM, for accepted requests before cancelling them.
GRACEFUL_SHUTDOWN_S = 60.0


class Lifecycle(Serving, Protocol):
    """A :class:`Serving` that can be started and stopped (``ServingSystem`` is one)."""

    async def start(self) -> None: ...

    async def shutdown(self, drain: bool = True) -> None: ...


@dataclass(eq=False)
class LiveTelemetry:
    """The serving process's own telemetry: the 10 Hz sampler, the score, their metrics."""

    metrics: ServingMetrics
    sampler: Sampler
    score: ScoreCollector

    def render(self) -> str:
        return self.metrics.render()


def replica_pids(serving: Serving) -> dict[str, int]:
    """Replica id → worker pid, from ``serving.models()`` (replicas without a pid skipped)."""
    out: dict[str, int] = {}
    for model in serving.models():
        for replica in model.get("replicas") or []:
            pid = replica.get("pid")
            if isinstance(pid, int) and pid > 0 and replica.get("state") != "stopped":
                out[str(replica.get("id"))] = pid
    return out


def live_telemetry(
    serving: Serving,
    *,
    clock: Clock,
    node: NodeType,
    slo_s: Mapping[str, float],
    throughput: Mapping[str, Mapping[str, float]],
    records: Callable[[], Sequence[RecordLike]],
) -> LiveTelemetry:
    """Wire the sampler (worker pids from ``serving.models()``) and the score collector.

    ``throughput``: per model, the profiled items/s of each variant on this machine; the
    score's ``E_ref`` for a model is ``node.peak_watts / (max over the variants in use of
    throughput × node.speedup)``. ``records``: the recent request records.
    """
    metrics = ServingMetrics()
    sampler = Sampler.for_node(lambda: replica_pids(serving), node, clock=clock, metrics=metrics)

    def reference() -> dict[str, float]:
        out = {}
        for model in serving.models():
            name = str(model.get("name"))
            rates = throughput.get(name, {})
            best = max((rates.get(v, 0.0) for v in model.get("variants") or []), default=0.0)
            out[name] = reference_energy_per_item(node.peak_watts, best * node.speedup)
        return out

    score = ScoreCollector(
        score_gauge=metrics.score,
        term_gauge=metrics.score_term,
        records=records,
        energy_between=sampler.energy_between,
        reference=reference,
        slo_s=slo_s,
        now=clock.now,
    )
    metrics.registry.add_collector(score)
    return LiveTelemetry(metrics, sampler, score)


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising SIGTERM/SIGINT after a graceful shutdown (which
    would make a clean drain exit with the signal's status instead of 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; a port in use → :class:`CoscaleError`.

    The protocol is named (``IPPROTO_TCP``, not the default 0): asyncio's transports turn
    Nagle's algorithm off (``TCP_NODELAY``) only on sockets whose ``proto`` says TCP, and
    accepted connections inherit the listener's. Without it, under the standard asyncio
    loop (uvloop sets the option regardless), every response waited for the client's
    delayed ACK: 44 ms for ``/healthz`` instead of 0.5 ms, measured here.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise CoscaleError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}.",
            fix="choose another --port (or stop what is using it), and check --host.",
            code="bind_failed",
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_server(
    system: Lifecycle,
    *,
    sock: socket.socket,
    clock: Clock,
    limits: ApiLimits | None = None,
    telemetry: LiveTelemetry | None = None,
    on_ready: Callable[[], None] | None = None,
    log_level: str = "info",
    auth: TenantAuth | None = None,
) -> None:
    """Serve ``system`` over HTTP until SIGTERM/SIGINT, then drain and return.

    ``sock``: a listening socket (:func:`bind_socket`; bind it first, so a busy port fails
    before anything starts). The app starts accepting at once (``/healthz`` 200,
    ``/readyz`` 503) while the system starts its replicas in the background; the sampler
    runs on the event loop. On
    SIGTERM or SIGINT: stop accepting connections, let every accepted request finish
    (up to :data:`GRACEFUL_SHUTDOWN_S`), then ``system.shutdown(drain=True)``, stop the
    sampler, return. A second SIGINT forces the exit. If the system fails to start, the
    server stops and the start error is raised. Once the system has started, the
    process's heap is frozen out of the garbage collector's full collections
    (:mod:`coscale.runtime.heap`: each stalled the event loop ~0.1 s).
    """
    failure: list[BaseException] = []
    server_box: list[_Server] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        if telemetry is not None:
            telemetry.sampler.start(schedule=loop_scheduler(clock, loop))

        def started(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                return
            error = task.exception()
            if error is not None:
                failure.append(error)
                server_box[0].should_exit = True
                return
            freeze_startup_heap()  # full GC collections stalled the loop ~0.1 s each
            if on_ready is not None:
                on_ready()

        starting = asyncio.create_task(system.start())
        starting.add_done_callback(started)
        try:
            yield
        finally:
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(BaseException):
                    await starting
            try:
                await system.shutdown(drain=True)
            finally:
                if telemetry is not None:
                    telemetry.sampler.stop()

    sources = [telemetry.render] if telemetry is not None else []
    app = create_app(system, limits=limits, metrics_sources=sources, lifespan=lifespan, auth=auth)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
    )
    server = _Server(config)
    server_box.append(server)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failure:
        raise failure[0]
