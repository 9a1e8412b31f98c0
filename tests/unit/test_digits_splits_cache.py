"""The digits split's cache file: same arrays as scikit-learn's split, rebuilt when
corrupt, and read without importing scikit-learn (a worker's warm-up input)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from coscale.accel import digits
from coscale.accel.digits import _SPLIT_FIELDS, _compute_splits, _splits_cache_path, digits_splits


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("COSCALE_HOME", str(tmp_path))
    digits_splits.cache_clear()
    yield tmp_path
    digits_splits.cache_clear()


def _same(a: digits.DigitsSplits, b: digits.DigitsSplits) -> None:
    for name in _SPLIT_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and not x.flags.writeable, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_cached_split_equals_the_computed_one_and_survives_corruption(home: Path) -> None:
    expected = _compute_splits()
    first = digits_splits()
    path = _splits_cache_path()
    assert path.exists() and path.is_relative_to(home)
    _same(first, expected)
    digits_splits.cache_clear()
    _same(digits_splits(), expected)  # read back from the file
    path.write_bytes(path.read_bytes()[:-10])  # corrupt: the checksum no longer matches
    digits_splits.cache_clear()
    _same(digits_splits(), expected)


def test_reading_the_cache_does_not_import_sklearn(home: Path) -> None:
    digits_splits()  # writes the cache
    code = (
        "import sys; from coscale.accel.digits import digits_splits; "
        "s = digits_splits(); print(len(s.test_x), 'sklearn' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "COSCALE_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [str(digits.TEST_SIZE), "False"]
