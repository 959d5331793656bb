"""Atomic writes (vaecli.fileio): a failing write leaves the old file and no temporary file."""

import pytest


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    from vaecli.fileio import atomic_write, atomic_write_text

    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")

    def bad(tmp):
        tmp.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(p, bad)
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]
