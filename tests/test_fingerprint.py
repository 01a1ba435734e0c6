"""The shipped weights' fingerprint: remembered by file stats, recomputed when a file changes."""

import os

import agelens.export.shipped as shipped


def test_fingerprint_memo_follows_the_files(tmp_path, monkeypatch):
    wd = tmp_path / "weights"
    wd.mkdir()
    (wd / "teacher.safetensors").write_bytes(b"a" * 10)
    (wd / "teacher.json").write_text("{}")
    monkeypatch.setattr(shipped, "weights_dir", lambda: wd)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = shipped.shipped_fingerprint()
    assert (shipped.onnx_cache_root() / shipped.FINGERPRINT_MEMO).is_file()
    reads = []
    real = type(wd).read_bytes
    monkeypatch.setattr(type(wd), "read_bytes", lambda self: reads.append(self) or real(self))
    assert shipped.shipped_fingerprint() == first and not reads  # from the memo: nothing read
    st = os.stat(wd / "teacher.safetensors")
    (wd / "teacher.safetensors").write_bytes(b"b" * 10)  # same size, same time: the stats must still differ
    os.utime(wd / "teacher.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = shipped.shipped_fingerprint()
    assert second != first and reads
    (wd / "teacher.safetensors").write_bytes(b"a" * 10)
    os.utime(wd / "teacher.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000))
    assert shipped.shipped_fingerprint() == first  # the same bytes give the same key, whatever the memo says


def test_fingerprint_without_a_writable_cache(tmp_path, monkeypatch):
    wd = tmp_path / "weights"
    wd.mkdir()
    (wd / "teacher.safetensors").write_bytes(b"x")
    monkeypatch.setattr(shipped, "weights_dir", lambda: wd)
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")  # the cache root cannot be created
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert len(shipped.shipped_fingerprint()) == 16
