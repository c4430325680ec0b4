"""Path-based atomic saves (Keras writers): the old file or the new one, never a half-written one."""

from __future__ import annotations

import pytest

from kafrob import atomic


def test_save_with_keeps_the_suffix_and_replaces(tmp_path):
    target = tmp_path / "sub" / "final.weights.h5"
    seen = []
    atomic.save_with(target, lambda p: (seen.append(p.name), p.write_bytes(b"new")))
    assert seen == [".tmp-final.weights.h5"] and target.read_bytes() == b"new"


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"old")

    def crash(p):
        p.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.save_with(target, crash)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.keras"]
