"""The engine's allocator setting: once per process, switchable, and a clear error for a bad value."""

import ctypes.util
import platform

import pytest

from baffle.engine import allocator


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(allocator, "_done", None)
    yield
    monkeypatch.setattr(allocator, "_done", None)


@pytest.mark.skipif(platform.system() != "Linux" or "libc" not in (ctypes.util.find_library("c") or ""), reason="glibc only")
def test_sets_the_top_pad_once(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    first = allocator.retain_freed_memory()
    assert first == f"freed heap kept up to {allocator.DEFAULT_MB} MiB (M_TOP_PAD)"
    monkeypatch.setenv(allocator.ENV, "0")
    assert allocator.retain_freed_memory() == first  # once per process: a later engine does not undo it


def test_zero_leaves_the_c_library_alone(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "0")
    assert "disabled by BAFFLE_MALLOC_TOP_PAD_MB=0" in allocator.retain_freed_memory()


@pytest.mark.parametrize("bad", ["-1", "lots", "1.5"])
def test_bad_values_are_refused_in_one_line(monkeypatch, bad):
    monkeypatch.setenv(allocator.ENV, bad)
    with pytest.raises(ValueError, match=f"BAFFLE_MALLOC_TOP_PAD_MB must be a whole number of MiB >= 0, got '{bad}'"):
        allocator.retain_freed_memory()
