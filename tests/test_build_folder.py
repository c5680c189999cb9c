"""`fsutil.build_folder`: the one build-then-rename helper (converter cache and merge, model
import, demo folders)."""

from __future__ import annotations

import pytest

from geolocsft.fsutil import build_folder


def test_a_finished_build_appears_whole_and_readable(tmp_path):
    final = tmp_path / "deep" / "model"
    with build_folder(final) as temp:
        assert temp.parent == final.parent and temp.name.startswith(".model.tmp-")
        assert not final.exists()  # nothing at the target while it is being built
        (temp / "a.bin").write_bytes(b"x")
    assert (final / "a.bin").read_bytes() == b"x"
    assert final.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in final.parent.iterdir()] == ["model"]


def test_a_failed_build_leaves_nothing_and_keeps_the_old_folder(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="converter crashed"):
        with build_folder(final, replace=True) as temp:
            (temp / "half.bin").write_bytes(b"half")
            raise RuntimeError("converter crashed")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in final.iterdir()] == ["old.bin"]


def test_an_existing_folder_is_replaced_only_when_asked(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "user.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not replacing"):
        with build_folder(final) as temp:
            (temp / "new.bin").write_bytes(b"new")
    assert [p.name for p in final.iterdir()] == ["user.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with build_folder(final, replace=True) as temp:
        (temp / "new.bin").write_bytes(b"new")
    assert [p.name for p in final.iterdir()] == ["new.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the old one is gone
