"""The shared-memory transport: payload encode/decode, segment growth and clean-up.

Real POSIX shared memory in this process (no worker processes): every array dtype and
shape the data plane can send, unicode text (lone surrogates included), dict batches of
a multi-input model file, the inline fallback, and the segment lifecycle (growth,
re-attach, unlink, no leftovers).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coscale.runtime import shm

_names = itertools.count()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh segment prefix; the test fails if it leaves a segment behind."""
    value = shm.segment_prefix(f"t{next(_names)}")
    yield value
    leftovers = shm.list_segments(value)
    shm.unlink_all(value)
    assert leftovers == [], f"segments leaked: {leftovers}"


def roundtrip(batch: object, *, copy: bool = True, size: int = 1 << 20) -> object:
    buf = bytearray(size)
    descriptor = shm.write_payload(batch, memoryview(buf))
    return shm.read_payload(descriptor, memoryview(buf), copy=copy)


ARRAYS = [
    np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 7,
    np.linspace(-1, 1, 30, dtype=np.float64).reshape(5, 6),
    np.array([1.5, -2.25, np.inf, -np.inf], dtype=np.float16),
    np.arange(-128, 128, dtype=np.int8).reshape(16, 16),
    np.arange(256, dtype=np.uint8).reshape(2, 128),
    np.array([[1, -(2**62)], [2**62, 0]], dtype=np.int64),
    np.array([[True, False, True]]),
    np.array([1 + 2j, -3.5j], dtype=np.complex64),
    np.array(["ab", "ünï", "日本語"], dtype="<U3"),
    np.array([b"abc", b"\x00\xff"], dtype="S3"),
    np.arange(12, dtype=">f4").reshape(3, 4),  # big-endian survives as is
    np.zeros((0, 64), dtype=np.float32),
    np.zeros((3, 0, 2), dtype=np.int32),
    np.array(3.5, dtype=np.float32),  # 0-d
    np.arange(60, dtype=np.float32).reshape(3, 4, 5),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_array_roundtrip_keeps_values_dtype_and_shape(array: np.ndarray) -> None:
    out = roundtrip(array)
    assert isinstance(out, np.ndarray)
    assert out.dtype == array.dtype
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_non_contiguous_arrays_are_sent_contiguous_with_the_same_values() -> None:
    base = np.arange(200, dtype=np.float32).reshape(10, 20)
    for view in (base.T, base[::2, ::3], base[:, 5]):
        out = roundtrip(view)
        assert isinstance(out, np.ndarray)
        assert out.flags.c_contiguous
        np.testing.assert_array_equal(out, view)


def test_nan_payload_bits_are_preserved() -> None:
    array = np.array([np.nan, 1.0, -0.0], dtype=np.float32)
    out = roundtrip(array)
    assert isinstance(out, np.ndarray)
    assert out.tobytes() == array.tobytes()


def test_copy_false_is_a_view_of_the_segment_and_copy_true_owns_its_memory() -> None:
    buf = bytearray(4096)
    array = np.arange(8, dtype=np.float32)
    descriptor = shm.write_payload(array, memoryview(buf))
    view = shm.read_payload(descriptor, memoryview(buf), copy=False)
    owned = shm.read_payload(descriptor, memoryview(buf), copy=True)
    assert isinstance(view, np.ndarray) and isinstance(owned, np.ndarray)
    view[0] = 42.0  # writes through to the buffer…
    again = shm.read_payload(descriptor, memoryview(buf), copy=True)
    assert isinstance(again, np.ndarray)
    assert again[0] == 42.0
    assert owned[0] == 0.0  # …but not into the earlier copy


def test_every_part_is_aligned() -> None:
    batch = {
        "a": np.zeros(3, dtype=np.int8),
        "b": np.zeros((2, 5), dtype=np.float64),
        "c": np.zeros(7, dtype=np.int16),
    }
    descriptor = shm.write_payload(batch, memoryview(bytearray(4096)))
    assert descriptor[0] == "dict"
    offsets = [part[1] for _, part in descriptor[1]]
    assert all(offset % shm.ALIGN == 0 for offset in offsets)
    assert len(set(offsets)) == 3


def test_descriptor_is_small_whatever_the_payload() -> None:
    import pickle

    array = np.zeros((1024, 256), dtype=np.float32)  # 1 MiB
    descriptor = shm.write_payload(array, memoryview(bytearray(shm.payload_size(array))))
    assert len(pickle.dumps(descriptor)) < 200


TEXTS = [
    "plain ascii",
    "",
    "ünïcödé façade naïve",
    "日本語のテキスト、中文文本",
    "emoji 👩‍👩‍👧 🚀 and flags 🇫🇷",
    "combining e\u0301 and RTL \u05e9\u05dc\u05d5\u05dd",
    "nul \x00 inside",
    "lone surrogate \ud800 survives",
    "x" * 5000,
]


def test_text_roundtrip_unicode() -> None:
    out = roundtrip(TEXTS)
    assert out == TEXTS
    assert all(type(item) is str for item in out)  # type: ignore[union-attr]


def test_text_layout_is_utf8_bytes_and_int32_code_point_offsets() -> None:
    texts = ["a", "éé", "日"]
    buf = bytearray(4096)
    descriptor = shm.write_payload(texts, memoryview(buf))
    kind, offset, count, nbytes = descriptor
    assert (kind, count) == ("text", 3)
    offsets = np.frombuffer(buf, dtype=np.int32, count=4, offset=offset)
    assert offsets.tolist() == [0, 1, 3, 4]
    start = offset + shm.ALIGN  # 16 bytes of offsets, aligned up
    assert bytes(buf[start : start + nbytes]) == "aéé日".encode()


def test_surrogate_halves_in_neighbouring_items_stay_apart() -> None:
    texts = ["\ud83d", "\ude00", "\ud83d\ude00", "😀"]
    out = roundtrip(texts)
    assert out == texts
    assert [len(t) for t in out] == [1, 1, 2, 1]  # type: ignore[union-attr]


def test_empty_text_list_and_tuple() -> None:
    assert roundtrip([]) == []
    assert roundtrip(("a", "b")) == ["a", "b"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=20))
def test_any_list_of_strings_roundtrips(texts: list[str]) -> None:
    assert roundtrip(texts, size=1 << 16) == texts


def test_dict_batch_of_named_arrays() -> None:
    batch = {
        "input_ids": np.array([[101, 2023, 102]], dtype=np.int64),
        "mask": np.ones((1, 3), dtype=np.bool_),
        "pixels": np.full((1, 3, 2, 2), 0.5, dtype=np.float32),
    }
    out = roundtrip(batch)
    assert isinstance(out, dict)
    assert list(out) == list(batch)
    for name, array in batch.items():
        assert out[name].dtype == array.dtype
        np.testing.assert_array_equal(out[name], array)


@pytest.mark.parametrize(
    "value",
    [
        np.array([{"a": 1}, None], dtype=object),
        np.zeros(2, dtype=[("x", np.int32), ("y", np.float32)]),
        ["text", 3],
        [[1, 2], [3, 4]],
        None,
        {"x": [1, 2]},
        {},
    ],
    ids=["object-array", "structured", "mixed-list", "nested-list", "none", "dict-list", "empty"],
)
def test_anything_else_travels_inline(value: object) -> None:
    descriptor = shm.write_payload(value, None)
    assert descriptor[0] == "inline"
    assert shm.payload_size(value) == 0
    out = shm.read_payload(descriptor, None)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(out, value)  # type: ignore[arg-type]
    else:
        assert out == value


def test_payload_size_is_exactly_enough() -> None:
    for batch in [*ARRAYS[:5], TEXTS, {"a": ARRAYS[0], "b": ARRAYS[3]}]:
        size = shm.payload_size(batch)
        shm.write_payload(batch, memoryview(bytearray(size)))  # fits
        if size:
            with pytest.raises(ValueError, match="does not fit"):
                shm.write_payload(batch, memoryview(bytearray(size - 1)))


def test_unknown_descriptor_and_missing_buffer_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown payload"):
        shm.read_payload(("pickle", 0), memoryview(bytearray(8)))
    with pytest.raises(ValueError, match="needs a shared-memory segment"):
        shm.read_payload(("array", 0, (1,), "<f4"), None)


@pytest.mark.parametrize(
    ("current", "needed", "expected"),
    [
        (0, 1, 4096),  # at least a page
        (4096, 5000, 8192),  # doubles
        (8192, 100_000, 102_400),  # or what is needed, rounded up to a page
        (1 << 20, (1 << 20) + 1, 2 << 20),
    ],
)
def test_grown_size(current: int, needed: int, expected: int) -> None:
    assert shm.grown_size(current, needed) == expected
    assert shm.grown_size(current, needed) >= needed


# ------------------------------------------------------------------ segments


def test_writer_grows_into_a_new_generation_and_unlinks_the_old(prefix: str) -> None:
    writer = shm.Writer(prefix, "i", initial_size=4096, owns=True)
    reader = shm.Reader(owns=False)
    small = np.arange(100, dtype=np.float32)
    name0, d0 = writer.write(small)
    assert name0 == f"{prefix}i0"
    np.testing.assert_array_equal(reader.read(name0, d0, copy=True), small)

    big = np.arange(300_000, dtype=np.float32)  # 1.2 MB: needs a bigger segment
    name1, d1 = writer.write(big)
    assert name1 == f"{prefix}i1"
    assert writer.segment is not None and writer.segment.size >= big.nbytes
    assert shm.list_segments(prefix) == [name1]  # the old generation is gone
    np.testing.assert_array_equal(reader.read(name1, d1, copy=True), big)

    name2, d2 = writer.write(small)  # fits: same segment, no new generation
    assert name2 == name1
    np.testing.assert_array_equal(reader.read(name2, d2, copy=True), small)

    reader.close()
    writer.close()
    assert shm.list_segments(prefix) == []


def test_reader_that_owns_unlinks_what_it_leaves(prefix: str) -> None:
    """The parent reads outputs written by a worker that never unlinks (owns=False)."""
    writer = shm.Writer(prefix, "o", initial_size=4096, owns=False)
    reader = shm.Reader(owns=True)
    name0, d0 = writer.write(np.ones(10, dtype=np.float32))
    reader.read(name0, d0, copy=True)
    name1, d1 = writer.write(np.ones(10_000, dtype=np.float32))
    assert shm.list_segments(prefix) == [name0, name1]  # the writer did not unlink
    out = reader.read(name1, d1, copy=True)
    assert out.shape == (10_000,)
    assert shm.list_segments(prefix) == [name1]  # the owning reader unlinked gen 0
    writer.close()
    reader.close()
    assert shm.list_segments(prefix) == []


def test_text_grows_the_segment_too(prefix: str) -> None:
    writer = shm.Writer(prefix, "i", initial_size=4096, owns=True)
    reader = shm.Reader(owns=False)
    texts = ["数据 " * 2000, "b"]
    name, descriptor = writer.write(texts)
    assert writer.segment is not None and writer.segment.size > 4096
    assert reader.read(name, descriptor, copy=False) == texts
    reader.close()
    writer.close()


def test_inline_payloads_create_no_segment(prefix: str) -> None:
    writer = shm.Writer(prefix, "i", initial_size=4096, owns=True)
    name, descriptor = writer.write([1, "mixed"])
    assert name is None and descriptor == ("inline", [1, "mixed"])
    assert shm.Reader(owns=False).read(name, descriptor, copy=True) == [1, "mixed"]
    assert shm.list_segments(prefix) == []


def test_unlink_all_removes_by_prefix_and_known_names(prefix: str) -> None:
    a = shm.Segment.create(f"{prefix}i0", 4096)
    b = shm.Segment.create(f"{prefix}o3", 4096)
    a.close()
    b.close()
    assert shm.unlink_all(prefix, known=[f"{prefix}o4"]) == 2  # o4 never existed
    assert shm.list_segments(prefix) == []
    assert shm.unlink_quietly(f"{prefix}i0") is False


def test_create_replaces_a_stale_segment_of_the_same_name(prefix: str) -> None:
    stale = shm.Segment.create(f"{prefix}i0", 4096)
    stale.buf[:4] = b"old!"
    stale.close()
    fresh = shm.Segment.create(f"{prefix}i0", 8192)
    assert fresh.size >= 8192
    assert bytes(fresh.buf[:4]) == b"\x00\x00\x00\x00"
    fresh.close()
    fresh.unlink()


def test_close_with_a_live_view_does_not_raise(prefix: str) -> None:
    segment = shm.Segment.create(f"{prefix}i0", 4096)
    view = np.ndarray((4,), np.float32, buffer=segment.buf)
    segment.close()  # the mapping outlives the view; no BufferError
    segment.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        _ = segment.buf
    del view
    segment.unlink()


def test_segment_prefix_names_the_owner() -> None:
    assert shm.segment_prefix("r7").startswith(f"cs-{os.getpid()}-r7-")
    assert shm.segment_prefix("r7", owner_pid=12) == "cs-12-r7-"
    assert shm.segment_name("cs-12-r7-", "o", 3) == "cs-12-r7-o3"
