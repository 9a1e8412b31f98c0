"""What the HTTP API and the CLI need from the running system.

:class:`Serving` is implemented by :class:`coscale.runtime.system.ServingSystem`.
Its errors are :class:`~coscale.errors.CoscaleError` subclasses that carry their
HTTP status and stable ``code`` (the API renders ``{"error": code, "message": text}``):

==========================  ======  ==========================================
error                       status  when
==========================  ======  ==========================================
``UnknownModelError``       404     no such model
``InvalidInputError``       422     an item has the wrong type, shape or range
``PayloadTooLarge``         413     too many items / body over the limit
``Overloaded``              429     admission control sheds load (``retry_after_s``)
``NotReady``                503     a model has no serving replica yet, or shutting down
``DeadlineExceeded``        504     the request's deadline passed before it was answered
``ReplicaFailure``          502     the batch failed on every replica tried
==========================  ======  ==========================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from coscale.errors import CoscaleError


class PayloadTooLarge(CoscaleError):
    code = "payload_too_large"
    http_status = 413


class Overloaded(CoscaleError):
    code = "overloaded"
    http_status = 429

    def __init__(self, message: str, *, retry_after_s: float, fix: str = "") -> None:
        super().__init__(message, fix=fix)
        self.retry_after_s = retry_after_s


class NotReady(CoscaleError):
    code = "not_ready"
    http_status = 503


class DeadlineExceeded(CoscaleError):
    code = "deadline_exceeded"
    http_status = 504


class ReplicaFailure(CoscaleError):
    code = "replica_failure"
    http_status = 502


class Serving(Protocol):
    """The running system as the API sees it."""

    async def infer(
        self,
        model: str,
        items: Sequence[Any],
        *,
        tenant: str = "default",
        timeout_s: float | None = None,
        raw: bool = False,
        waited_s: float = 0.0,
    ) -> Any:
        """Validate, admit, batch, route and run; one output object per item, in order.

        ``items`` is a list of JSON items or an array with the batch axis first (a binary
        request). With ``raw`` the answer is the float32 output rows as one array
        (``np.ndarray``, one row per item) instead of a list of JSON objects.
        ``waited_s``: how long the request already spent in the HTTP layer (reading and
        parsing its body); its deadline and timeout count from then.
        """
        ...

    def note_refused(self, model: str, tenant: str) -> None:
        """A request of ``tenant`` for ``model`` was refused before ``infer`` (its rate
        limit or quota): admission counts it as that tenant's demand."""
        ...

    def ready(self) -> bool:
        """True once every model has at least one READY replica (and not shutting down)."""
        ...

    def models(self) -> list[dict[str, Any]]:
        """Per model: name, source, variants in use, replicas (id, variant, node type, state)."""
        ...

    def stats(self, tenant: str | None = None) -> dict[str, Any]:
        """The run summary so far (DESIGN.md contract), optionally for one tenant."""
        ...

    def metrics_text(self) -> str:
        """Prometheus text exposition; every metric name starts with ``coscale_``."""
        ...
