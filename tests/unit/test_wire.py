"""The .npy codec of binary requests (coscale.runtime.wire): pure, no server."""

from __future__ import annotations

import io

import numpy as np
import pytest

from coscale.runtime.wire import MalformedBody, decode_npy, encode_npy, media_type, wants_npy


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(24, dtype=np.int16).reshape(2, 3, 4),
        np.array(["a sentence", "another, longer sentence"]),
        np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    ],
)
def test_round_trip_is_exact(array: np.ndarray) -> None:
    back = decode_npy(encode_npy(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_reads_what_numpy_save_writes_including_fortran_order() -> None:
    array = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    stream = io.BytesIO()
    np.save(stream, array)
    np.testing.assert_array_equal(decode_npy(stream.getvalue()), array)


def test_reads_format_version_2() -> None:
    array = np.arange(4, dtype=np.float32).reshape(2, 2)
    stream = io.BytesIO()
    np.lib.format.write_array(stream, array, version=(2, 0))
    np.testing.assert_array_equal(decode_npy(stream.getvalue()), array)


def test_decoding_does_not_copy() -> None:
    body = encode_npy(np.zeros((1000, 64), np.float32))
    assert not decode_npy(body).flags.owndata


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "not a valid .npy"),
        (b'{"inputs": []}', "not a valid .npy"),
        (encode_npy(np.zeros(4, np.float32)) + b"x", "body carries 17"),
        (encode_npy(np.array(1.5)), "scalar"),
        # found by the API fuzzer: numpy's header filter raises tokenize.TokenError
        (
            b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (), }"
            + b" " * 55
            + b"\x00" * 7
            + b"{",
            "not a valid .npy",
        ),
    ],
)
def test_bad_bodies_name_the_problem(body: bytes, needle: str) -> None:
    with pytest.raises(MalformedBody) as info:
        decode_npy(body)
    assert needle in info.value.message
    assert info.value.http_status == 400 and info.value.code == "malformed_body"


def test_object_arrays_are_refused_without_unpickling() -> None:
    stream = io.BytesIO()
    np.save(stream, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(MalformedBody, match="objects"):
        decode_npy(stream.getvalue())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, ""),
        ("Application/X-NPY; charset=binary", "application/x-npy"),
        (" application/json ", "application/json"),
    ],
)
def test_media_type(header: str | None, expected: str) -> None:
    assert media_type(header) == expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        ("application/json", False),
        ("application/x-npy", True),
        ("application/json;q=0.9, application/x-npy;q=0.5", True),
        ("application/x-npy;q=0", False),
        ("application/x-npy;q=abc", False),
        ("*/*", False),
    ],
)
def test_wants_npy(accept: str | None, expected: bool) -> None:
    assert wants_npy(accept) is expected
