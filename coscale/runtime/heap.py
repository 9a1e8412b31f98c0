"""Short garbage-collector pauses in long-running serving processes.

CPython's cyclic garbage collector runs a *full* (generation 2) collection whenever the
objects that survived younger collections since the last full one exceed a quarter of
those in generation 2; a full collection visits every tracked object and stops the
process meanwhile. A serving process holds a large, permanent heap from its imports
and start-up (the server: FastAPI, pydantic, numpy, PyTorch and the tokenizers behind
the model families, about 200,000 objects; a worker: its runtime and model), so each
full collection costs ~100 ms there while finding almost nothing to free.

Measured (``bench_reliability.py overload``, MiniLM under 3× overload, 2 cores): the
server ran a full collection of 100–130 ms every 11–13 s, each stalling the event loop
that answers, batches and routes; every request waiting then finished that much later,
and the admitted requests of that second finished late (14–34 per stall, the bulk of
the run's late answers outside the flood's first seconds).

:func:`freeze_startup_heap` is called once a process has started (the server when its
system is up, a worker when its model is built and warm, the load generator before its
first request): ``gc.collect()`` then ``gc.freeze()`` moves every object alive then to
the permanent generation, which collections no longer visit (Python ≥ 3.7). Later full
collections visit only what was created afterwards. Cost: garbage cycles among the
frozen objects that appear later are never freed — start-up objects live as long as
the process anyway.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then freeze every surviving object out of later collections
    (module docstring). Returns the number of objects frozen so far in this process
    (``gc.get_freeze_count()``). Calling it again freezes what was created since."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
