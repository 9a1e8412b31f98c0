"""Per-model request queues, with O(1) views for batching policies.

Shared by both executors: the cluster simulator (:mod:`coscale.sim.cluster`) and the live
batcher (:mod:`coscale.runtime.batcher`) queue through :class:`ModelQueue`, so the order
a batching policy sees is the same in simulation and live.

A :class:`ModelQueue` holds a model's admitted requests not yet dispatched, in the order
they will be dispatched:

1. **Retries first.** Requests taken back from a replica that died are pushed to the
   front (:meth:`ModelQueue.push_front`), in their original order, ahead of everything.
2. **One tenant (or one weight): FIFO.** A list with a head index; push, take and index
   are O(1) (amortized: the consumed prefix is dropped when it is over half the list).
3. **Several tenants: weighted fair queueing**, exactly the start-time fair queueing of
   :class:`~coscale.policies.admission.WeightedFairQueue` (the policy object supplies
   the weights): on push at virtual time ``v``, ``start = max(v, F_t)`` and ``finish =
   start + items / w_t`` with ``F_t`` the tenant's previous finish tag; the next request is
   the tenants' oldest with the smallest ``(class, start, push order)`` — class 0 for a
   request pushed with ``priority`` (admission's reserved share), else 1; after a pop
   ``v`` = its start tag, or the largest
   finish tag served when the queue is now empty. A tenant's tags grow with its pushes, so
   each tenant is a FIFO and the global order is a k-way merge of the tenants' heads (a
   heap): push and pop are O(log T) for T backlogged tenants instead of the policy's O(T)
   persistent copies. ``tests/unit/test_cluster_sim.py`` checks that both give the same
   order.

:meth:`ModelQueue.view` is the ``Sequence[Request]`` a batching policy reads, oldest (next
to dispatch) first: ``len`` is O(1); indexing, slicing and iterating materialize only the
prefix asked for (O(k log T) for k requests under WFQ, O(k) for FIFO).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import overload

from coscale.types import Request

__all__ = ["ModelQueue", "QueueView"]

_COMPACT_MIN = 1024


class ModelQueue:
    """A model's queue (module docstring); ``weight(tenant)`` > 0 selects WFQ when given."""

    __slots__ = (
        "_fifo",
        "_front",
        "_head",
        "_heads",
        "_last_finish",
        "_max_finish",
        "_seq",
        "_size",
        "_tenants",
        "_virtual",
        "_weight",
    )

    def __init__(self, weight: Callable[[str], float] | None = None) -> None:
        self._weight = weight
        self._front: deque[Request] = deque()
        self._fifo: list[Request] = []
        self._head = 0
        # WFQ state
        self._tenants: dict[str, deque[tuple[int, float, int, Request, float]]] = {}
        self._heads: list[tuple[int, float, int, str]] = []
        self._last_finish: dict[str, float] = {}
        self._virtual = 0.0
        self._max_finish = 0.0
        self._seq = 0
        self._size = 0

    @property
    def fair(self) -> bool:
        """True when requests are ordered by weighted fair queueing."""
        return self._weight is not None

    def __len__(self) -> int:
        return len(self._front) + self._size

    def __bool__(self) -> bool:
        return bool(self._front) or self._size > 0

    # -- pushing ----------------------------------------------------------------------

    def push(self, request: Request, priority: bool = False) -> None:
        """Append an admitted request (FIFO) or tag it and queue it fairly (WFQ; with
        ``priority``, in class 0)."""
        self._size += 1
        weight = self._weight
        if weight is None:
            self._fifo.append(request)
            return
        tenant = request.tenant
        start = max(self._virtual, self._last_finish.get(tenant, 0.0))
        finish = start + request.items / weight(tenant)
        self._last_finish[tenant] = finish
        seq = self._seq
        self._seq = seq + 1
        tq = self._tenants.get(tenant)
        if tq is None:
            tq = self._tenants[tenant] = deque()
        cls = 0 if priority else 1
        if not tq:
            heapq.heappush(self._heads, (cls, start, seq, tenant))
        tq.append((cls, start, seq, request, finish))

    def push_front(self, requests: Sequence[Request]) -> None:
        """Put ``requests`` back at the very front, in the given order."""
        self._front.extendleft(reversed(requests))

    # -- taking -----------------------------------------------------------------------

    def take_batch(self, k: int, max_items: int, dead: set[int]) -> list[Request]:
        """Remove and return the next at most ``k`` requests whose items sum to at most
        ``max_items`` (at least one request when any is live), skipping — and forgetting
        in ``dead`` — the timed-out ones on the way. Requests past the cap stay where
        they are: taking them and putting them back at the front would move them out of
        the fair queue (ahead of later priority requests and of other tenants' turns).
        O(k log T)."""
        out: list[Request] = []
        items = 0
        while len(out) < k and self:
            head = self._head_request()
            if head.id in dead:
                self._pop_one()
                dead.discard(head.id)
                continue
            if out and items + head.items > max_items:
                break
            self._pop_one()
            out.append(head)
            items += head.items
        self._compact()
        return out

    def _head_request(self) -> Request:
        """The next request (the queue is not empty). O(1)."""
        if self._front:
            return self._front[0]
        if self._weight is None:
            return self._fifo[self._head]
        tenant = self._heads[0][3]
        return self._tenants[tenant][0][3]

    def _pop_one(self) -> None:
        """Remove the next request (the queue is not empty). O(log T)."""
        if self._front:
            self._front.popleft()
        elif self._weight is None:
            self._head += 1
            self._size -= 1
        else:
            self._pop_fair()

    def _compact(self) -> None:
        head = self._head
        if head >= _COMPACT_MIN and head * 2 >= len(self._fifo):
            del self._fifo[:head]
            self._head = 0

    def _pop_fair(self) -> Request:
        _, start, _, tenant = heapq.heappop(self._heads)
        tq = self._tenants[tenant]
        _, _, _, request, finish = tq.popleft()
        if tq:
            ncls, nstart, nseq, _, _ = tq[0]
            heapq.heappush(self._heads, (ncls, nstart, nseq, tenant))
        self._max_finish = max(self._max_finish, finish)
        self._size -= 1
        self._virtual = start if self._size else self._max_finish
        return request

    # -- reading ----------------------------------------------------------------------

    def peek(self, k: int) -> list[Request]:
        """The next ``k`` requests without removing them."""
        out = list(itertools.islice(self._front, k))
        need = k - len(out)
        if need <= 0 or self._size == 0:
            return out
        if self._weight is None:
            head = self._head
            out.extend(self._fifo[head : head + need])
            return out
        heads = list(self._heads)  # a heap stays a heap when copied
        pos: dict[str, int] = {}
        tenants = self._tenants
        while heads and need > 0:
            *_, tenant = heapq.heappop(heads)
            i = pos.get(tenant, 0)
            tq = tenants[tenant]
            out.append(tq[i][3])
            need -= 1
            pos[tenant] = i + 1
            if i + 1 < len(tq):
                ncls, nstart, nseq, _, _ = tq[i + 1]
                heapq.heappush(heads, (ncls, nstart, nseq, tenant))
        return out

    def iter_fifo(self) -> Iterator[Request]:
        """Every queued request, retries first, then in FIFO/WFQ-internal order (for
        draining the queue at the end of a run; not the dispatch order under WFQ)."""
        yield from self._front
        if self._weight is None:
            yield from itertools.islice(self._fifo, self._head, None)
            return
        for tq in self._tenants.values():
            for entry in tq:
                yield entry[3]

    def view(self) -> QueueView:
        """A fresh read-only ``Sequence`` of the queue in dispatch order."""
        return QueueView(self)

    def tenant_queues(self, weights: Iterable[str] = ()) -> tuple[tuple[str, int, float], ...]:
        """``(tenant, waiting requests, weight)`` for the tenants in ``weights`` and every
        tenant with a waiting request, sorted by tenant (retries put back at the front are
        no tenant's); ``()`` for a FIFO queue. O(T log T). What admission reads
        (:attr:`~coscale.types.ModelView.tenant_queues`)."""
        weight = self._weight
        if weight is None:
            return ()
        sizes = {t: 0 for t in weights}
        sizes.update((t, len(tq)) for t, tq in self._tenants.items() if tq)
        return tuple((t, n, weight(t)) for t, n in sorted(sizes.items()))

    def drop_dead_head(self, dead: set[int]) -> None:
        """Lazy removal of timed-out requests: take those at the head whose ids are in
        ``dead``, and forget them there. Stops at the first live request. O(removed)."""
        while dead and self:
            head = self._head_request()
            if head.id not in dead:
                return
            self._pop_one()
            dead.discard(head.id)


class QueueView(Sequence[Request]):
    """Read-only dispatch-order view of a :class:`ModelQueue` (valid until it changes).

    The prefix read so far is cached, so a policy that reads ``queue[0]``, then
    ``queue[:32]``, then iterates pays for the longest prefix once.
    """

    __slots__ = ("_cache", "_len", "_queue")

    def __init__(self, queue: ModelQueue) -> None:
        self._queue = queue
        self._len = len(queue)
        self._cache: list[Request] = []

    def __len__(self) -> int:
        return self._len

    def _upto(self, n: int) -> list[Request]:
        n = min(n, self._len)
        if len(self._cache) < n:
            self._cache = self._queue.peek(max(n, 2 * len(self._cache)))
        return self._cache

    @overload
    def __getitem__(self, index: int) -> Request: ...

    @overload
    def __getitem__(self, index: slice) -> list[Request]: ...

    def __getitem__(self, index: int | slice) -> Request | list[Request]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._len)
            if step == 1 and start >= stop:
                return []
            return self._upto(stop if step > 0 else self._len)[index]
        i = index + self._len if index < 0 else index
        if not 0 <= i < self._len:
            raise IndexError("queue index out of range")
        return self._upto(i + 1)[i]

    def __iter__(self) -> Iterator[Request]:
        done = 0
        want = 64
        while done < self._len:
            cache = self._upto(want)
            yield from cache[done:]
            done = len(cache)
            want = 2 * done

    def __bool__(self) -> bool:
        return self._len > 0
