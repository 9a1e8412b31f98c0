"""Shared-memory transport for batches crossing the worker process boundary.

A batch travels as **bytes in a shared-memory segment plus a small descriptor** sent
over the control :class:`multiprocessing.connection.Connection`: the descriptor
(a tuple of a few numbers and strings) is pickled, the payload is not. Sending a
1 MB array by pickling over a pipe copies it four times (pickle, pipe write, pipe
read, unpickle); through a segment it is copied once by the writer (into the
segment) and, by the parent only, once out (the worker reads its input in place).
``benchmarks/bench_transport.py`` measures both ways.

Layout (:func:`write_payload` / :func:`read_payload`). Every part starts at a
multiple of :data:`ALIGN` (64) bytes. Descriptors:

* ``("array", offset, shape, dtype_str)``: a C-contiguous array of a plain dtype
  (numbers, bool, fixed-width ``S``/``U``) stored at ``offset``; ``dtype_str`` is
  ``numpy.dtype.str`` (byte order included).
* ``("text", offset, count, nbytes)``: a ``list[str]``: ``count + 1`` int32 offsets
  ``o`` at ``offset`` followed (aligned) by the UTF-8 bytes (``nbytes``) of all items
  concatenated. The offsets count *code points*, so both sides make one call to the
  codec for the whole batch: the reader decodes the bytes once and item ``i`` is
  ``text[o[i]:o[i+1]]`` (per-item byte offsets would cost one codec call per item,
  about 3× slower for 64 sentences). Encoded with ``surrogatepass`` so every Python
  string (lone surrogates included) round-trips exactly; a batch of 2³¹ code points
  or more travels inline.
* ``("dict", ((name, array_descriptor), ...))``: a ``dict[str, np.ndarray]`` (a model
  file with several named inputs), each array laid out as above.
* ``("inline", value)``: anything else (object or structured arrays, lists that are not
  all strings, ``None``) travels pickled inside the descriptor. It is the rare path:
  bad input that got past validation, so that the worker's model reports the error.

Segments (:class:`Segment`) are POSIX shared memory (``/dev/shm`` on Linux) named
``{prefix}{role}{generation}`` with :func:`segment_prefix` =
``"cs-{owner pid}-{token}-"`` so that the owner can find and unlink them by name
after a crash (:func:`unlink_quietly`, :func:`list_segments`). A segment that is too
small for a batch is replaced by a new generation of :func:`grown_size` bytes; the
descriptor's segment name tells the reader to re-attach.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable, Sequence
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

#: Alignment of every part in a segment (a cache line; SIMD loads stay aligned).
ALIGN = 64
#: Smallest segment created (one page).
MIN_SEGMENT_BYTES = 4096
#: A segment that must grow becomes at least this many times larger (amortised growth).
GROWTH_FACTOR = 2.0
#: Prefix of every segment name coscale creates.
NAME_PREFIX = "cs-"
#: Where POSIX shared memory is visible as files (Linux).
SHM_DIR = Path("/dev/shm")

Descriptor = tuple[Any, ...]


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def segment_prefix(token: str, owner_pid: int | None = None) -> str:
    """``"cs-{owner_pid}-{token}-"``: every segment of one replica starts with this."""
    return f"{NAME_PREFIX}{owner_pid if owner_pid is not None else os.getpid()}-{token}-"


def segment_name(prefix: str, role: str, generation: int) -> str:
    """``{prefix}{role}{generation}``, e.g. ``cs-4242-r1-i0`` (input, first generation)."""
    return f"{prefix}{role}{generation}"


def grown_size(current: int, needed: int) -> int:
    """New size for a segment of ``current`` bytes that must hold ``needed`` bytes:
    ``max(needed, GROWTH_FACTOR × current, MIN_SEGMENT_BYTES)`` rounded up to a page
    (4096). Doubling keeps the number of re-allocations logarithmic in the largest batch."""
    size = max(needed, int(GROWTH_FACTOR * current), MIN_SEGMENT_BYTES)
    return -(-size // 4096) * 4096


def list_segments(prefix: str = NAME_PREFIX) -> list[str]:
    """Names of the shared-memory segments starting with ``prefix`` (Linux: ``/dev/shm``;
    an empty list where that folder does not exist)."""
    if not SHM_DIR.is_dir():
        return []
    return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(prefix))


class Segment:
    """A named shared-memory segment: created by its writer, attached by its reader.

    ``close()`` unmaps this process's view (tolerating views that are still exported:
    the mapping is then released when they are garbage-collected); ``unlink()`` removes
    the name (the memory is freed once every process has closed it). Both are
    idempotent.
    """

    def __init__(self, shm: shared_memory.SharedMemory) -> None:
        self._shm: shared_memory.SharedMemory | None = shm
        self.name = shm.name
        self.size = shm.size

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        """A new segment of at least ``size`` bytes (and :data:`MIN_SEGMENT_BYTES`)."""
        size = max(MIN_SEGMENT_BYTES, size)
        try:
            shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        except FileExistsError:  # left over from a crashed run of a recycled pid: replace it
            unlink_quietly(name)
            shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        return cls(shm)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """The existing segment ``name`` (``FileNotFoundError`` when there is none)."""
        return cls(shared_memory.SharedMemory(name=name, create=False))

    @property
    def buf(self) -> memoryview:
        if self._shm is None or self._shm.buf is None:
            raise ValueError(f"shared-memory segment {self.name} is closed")
        return self._shm.buf

    def close(self) -> None:
        if self._shm is None:
            return
        shm, self._shm = self._shm, None
        with contextlib.suppress(BufferError):  # a view is still alive; GC unmaps it later
            shm.close()

    def unlink(self) -> None:
        """Remove the name; a segment already gone is not an error."""
        unlink_quietly(self.name)

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, {self.size} bytes)"


def unlink_quietly(name: str) -> bool:
    """Unlink the segment ``name`` if it exists; True when one was removed."""
    try:
        shm = shared_memory.SharedMemory(name=name, create=False)
    except FileNotFoundError:
        return False
    try:
        shm.unlink()
    except FileNotFoundError:
        return False
    finally:
        shm.close()
    return True


def unlink_all(prefix: str, known: Iterable[str] = ()) -> int:
    """Unlink every segment whose name starts with ``prefix`` (as listed by
    :func:`list_segments`) and every name in ``known`` (for systems without
    ``/dev/shm``); returns how many were removed."""
    names = set(list_segments(prefix)) | set(known)
    return sum(unlink_quietly(name) for name in sorted(names))


# ------------------------------------------------------------------ encoding


def _is_plain_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype != object and value.dtype.fields is None


def _is_text(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


#: Text offsets are int32: a batch of more code points than this travels inline.
MAX_TEXT_CODE_POINTS = 2**31 - 1


def _encode_texts(texts: Sequence[str]) -> tuple[np.ndarray, bytes]:
    """Code-point offsets (int32, ``len + 1``) and the UTF-8 bytes of all texts."""
    offsets = np.fromiter(
        itertools.accumulate(map(len, texts), initial=0), dtype=np.int64, count=len(texts) + 1
    )
    return offsets.astype(np.int32), "".join(texts).encode("utf-8", "surrogatepass")


class _Prepared:
    """A batch ready to be written: its descriptor template and parts (``bytes``-likes)."""

    def __init__(self, batch: Any) -> None:
        self.parts: list[tuple[int, Any]] = []  # (offset, buffer)
        self.nbytes = 0
        self.descriptor = self._plan(batch)

    def _reserve(self, buffer: Any, nbytes: int) -> int:
        offset = _align(self.nbytes)
        self.parts.append((offset, buffer))
        self.nbytes = offset + nbytes
        return offset

    def _plan_array(self, array: np.ndarray) -> Descriptor:
        if not array.flags.c_contiguous:
            array = array.copy(order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
        offset = self._reserve(array, array.nbytes)
        return ("array", offset, tuple(array.shape), array.dtype.str)

    def _plan(self, batch: Any) -> Descriptor:
        if _is_plain_array(batch):
            return self._plan_array(batch)
        if _is_text(batch) and sum(map(len, batch)) <= MAX_TEXT_CODE_POINTS:
            offsets, data = _encode_texts(batch)
            start = self._reserve(offsets, offsets.nbytes)
            self._reserve(data, len(data))
            return ("text", start, len(batch), len(data))
        if (
            isinstance(batch, dict)
            and batch
            and all(isinstance(k, str) and _is_plain_array(v) for k, v in batch.items())
        ):
            return ("dict", tuple((k, self._plan_array(v)) for k, v in batch.items()))
        return ("inline", batch)


def payload_size(batch: Any) -> int:
    """Bytes of segment that :func:`write_payload` needs for ``batch`` (0 when inline)."""
    return _Prepared(batch).nbytes


def write_payload(batch: Any, buf: memoryview | None) -> Descriptor:
    """Copy ``batch`` into ``buf`` (which must hold :func:`payload_size` bytes) and
    return its descriptor. Raises ``ValueError`` when ``buf`` is too small."""
    return _write(_Prepared(batch), buf)


def _write(prepared: _Prepared, buf: memoryview | None) -> Descriptor:
    if prepared.descriptor[0] == "inline":
        return prepared.descriptor
    if buf is None or prepared.nbytes > len(buf):
        size = 0 if buf is None else len(buf)
        raise ValueError(f"payload of {prepared.nbytes} bytes does not fit {size} bytes")
    for offset, part in prepared.parts:
        if isinstance(part, np.ndarray):
            if part.nbytes:
                target = np.ndarray(part.shape, part.dtype, buffer=buf, offset=offset)
                np.copyto(target, part, casting="no")
        else:
            buf[offset : offset + len(part)] = part
    return prepared.descriptor


def _read_array(descriptor: Descriptor, buf: memoryview, copy: bool) -> np.ndarray:
    _, offset, shape, dtype = descriptor
    view = np.ndarray(tuple(shape), np.dtype(dtype), buffer=buf, offset=offset)
    return view.copy() if copy else view


def _read_text(descriptor: Descriptor, buf: memoryview) -> list[str]:
    _, offset, count, nbytes = descriptor
    offsets = np.ndarray((count + 1,), np.int32, buffer=buf, offset=offset).tolist()
    start = _align(offset + 4 * (count + 1))
    text = str(buf[start : start + nbytes], "utf-8", "surrogatepass")
    return [text[offsets[i] : offsets[i + 1]] for i in range(count)]


def read_payload(descriptor: Descriptor, buf: memoryview | None, *, copy: bool = True) -> Any:
    """The batch described by ``descriptor`` in ``buf``.

    ``copy=False`` returns arrays that are views of the segment (zero copy; valid until
    the writer reuses it — the worker reads its input this way); ``copy=True`` returns
    arrays that own their memory (the parent reads outputs this way). Texts are always
    new ``str`` objects.
    """
    kind = descriptor[0]
    if kind == "inline":
        return descriptor[1]
    if buf is None:
        raise ValueError(f"a {kind!r} payload needs a shared-memory segment")
    if kind == "array":
        return _read_array(descriptor, buf, copy)
    if kind == "text":
        return _read_text(descriptor, buf)
    if kind == "dict":
        return {name: _read_array(part, buf, copy) for name, part in descriptor[1]}
    raise ValueError(f"unknown payload descriptor {kind!r}")


# ------------------------------------------------------------------ channels


class Writer:
    """The writing end of one direction of a replica's transport.

    Holds the current :class:`Segment` (created lazily, of at least ``initial_size``
    bytes) and grows it on demand (:func:`grown_size`): the new generation is created
    first, the descriptor names it, and the old one is closed (and unlinked when
    ``owns`` — the parent owns every segment; the worker only creates its output
    segments and leaves unlinking to the parent, which knows their names even after
    the worker crashed).
    """

    def __init__(self, prefix: str, role: str, *, initial_size: int, owns: bool) -> None:
        self.prefix = prefix
        self.role = role
        self.initial_size = initial_size
        self.owns = owns
        self.segment: Segment | None = None
        self.next_generation = 0

    def reserve(self, nbytes: int) -> Segment:
        """The current segment, created or grown so that it holds ``nbytes``."""
        current = self.segment
        if current is not None and current.size >= nbytes:
            return current
        size = (
            max(self.initial_size, nbytes) if current is None else grown_size(current.size, nbytes)
        )
        fresh = Segment.create(segment_name(self.prefix, self.role, self.next_generation), size)
        self.next_generation += 1
        if current is not None:
            current.close()
            if self.owns:
                current.unlink()
        self.segment = fresh
        return fresh

    def write(self, batch: Any) -> tuple[str | None, Descriptor]:
        """Write ``batch``; returns (segment name, or None for an inline payload; descriptor)."""
        prepared = _Prepared(batch)
        if prepared.descriptor[0] == "inline":
            return None, prepared.descriptor
        segment = self.reserve(prepared.nbytes)
        return segment.name, _write(prepared, segment.buf)

    def close(self) -> None:
        if self.segment is not None:
            self.segment.close()
            if self.owns:
                self.segment.unlink()
            self.segment = None


class Reader:
    """The reading end: attaches to the segment a descriptor names (re-attaching when
    the writer grew it). With ``owns`` (the parent reading outputs), a segment it moves
    away from is unlinked, and :meth:`close` unlinks the current one."""

    def __init__(self, *, owns: bool) -> None:
        self.owns = owns
        self.segment: Segment | None = None

    def read(self, name: str | None, descriptor: Descriptor, *, copy: bool) -> Any:
        if name is None:
            return read_payload(descriptor, None, copy=copy)
        if self.segment is None or self.segment.name != name:
            fresh = Segment.attach(name)
            self.close()
            self.segment = fresh
        return read_payload(descriptor, self.segment.buf, copy=copy)

    def close(self) -> None:
        if self.segment is not None:
            self.segment.close()
            if self.owns:
                self.segment.unlink()
            self.segment = None
