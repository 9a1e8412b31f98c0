"""Binary request and response bodies: NumPy's ``.npy`` format over HTTP.

JSON costs far more per number than a small model does: parsing 64 pixel values and
rendering 10 probabilities take longer than the digits CNN's few microseconds per image.
For clients that already hold arrays, ``POST /v1/models/{model}/infer`` also takes and
gives the ``.npy`` format (version 1.0–3.0, the format ``np.save`` writes):

* request ``Content-Type: application/x-npy``: one array with the batch axis first —
  ``(items, 64)`` or ``(items, 8, 8)`` numbers for digits-cnn, a 1-D array of strings
  (``<U`` dtype) for minilm, ``(items, *input shape)`` for a single-input model file;
  the timeout, if any, goes in the query (``?timeout_ms=…``);
* response, when the request's ``Accept`` names ``application/x-npy``: the model's float32
  output rows as one array ``(items, *output shape)`` (digits-cnn: the 10 probabilities,
  whose argmax is the label; minilm: the 384-float embeddings). Otherwise the usual JSON
  ``{"outputs": […]}``, whichever way the inputs came.

Decoding reads the header and maps the data without copying it
(:func:`numpy.frombuffer`); object arrays (pickles) are refused, and so is a body whose
length does not match its header. Every problem is a 400 ``malformed_body`` naming it.
"""

from __future__ import annotations

import io
import math

import numpy as np

from coscale.errors import CoscaleError

__all__ = ["NPY_MEDIA_TYPE", "MalformedBody", "decode_npy", "encode_npy", "media_type", "wants_npy"]

NPY_MEDIA_TYPE = "application/x-npy"

_FIX = (
    "Send one array written by numpy.save (no pickled objects) with "
    f"Content-Type: {NPY_MEDIA_TYPE}, or JSON with Content-Type: application/json."
)

_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
    (3, 0): np.lib.format.read_array_header_2_0,  # 3.0 differs only in the header's encoding
}


class MalformedBody(CoscaleError):
    code = "malformed_body"
    http_status = 400


def media_type(header: str | None) -> str:
    """The bare media type of a ``Content-Type`` header: lower case, parameters dropped
    (``"Application/JSON; charset=utf-8"`` → ``"application/json"``); ``""`` when absent."""
    return (header or "").split(";", 1)[0].strip().lower()


def wants_npy(accept: str | None) -> bool:
    """True when an ``Accept`` header lists ``application/x-npy`` with a non-zero quality."""
    for part in (accept or "").split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        if kind.lower() != NPY_MEDIA_TYPE:
            continue
        quality = [p for p in params if p.lower().startswith("q=")]
        try:
            return not quality or float(quality[0][2:]) > 0
        except ValueError:
            return False
    return False


def decode_npy(body: bytes) -> np.ndarray:
    """The array in an ``.npy`` body, a read-only view of ``body`` (no copy).

    Raises :class:`MalformedBody` for a body that is not ``.npy``, an unknown format
    version, a header it cannot parse, an object dtype, a 0-d array, or data shorter or
    longer than ``prod(shape) × itemsize``.
    """
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        reader = _HEADER_READERS.get(version)
        if reader is None:
            raise MalformedBody(f"unsupported .npy format version {version}.", fix=_FIX)
        shape, fortran_order, dtype = reader(stream)
    except MalformedBody:
        raise
    except Exception as exc:  # numpy's header parser fails in many ways on hostile input
        # (ValueError, SyntaxError, and tokenize.TokenError from its fallback filter)
        raise MalformedBody(f"the request body is not a valid .npy array: {exc}", fix=_FIX) from exc
    if dtype.hasobject:
        raise MalformedBody("the .npy array holds Python objects, which are refused.", fix=_FIX)
    if len(shape) == 0:
        raise MalformedBody("the .npy array is a scalar; the batch axis must come first.", fix=_FIX)
    offset = stream.tell()
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if len(body) - offset != expected:
        raise MalformedBody(
            f"the .npy header announces {expected:,} bytes of data for shape {shape}, but the "
            f"body carries {len(body) - offset:,}.",
            fix=_FIX,
        )
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def encode_npy(array: np.ndarray) -> bytes:
    """``array`` in ``.npy`` format (the smallest version that holds its header)."""
    stream = io.BytesIO()
    np.lib.format.write_array(stream, np.asarray(array), allow_pickle=False)
    return stream.getvalue()
