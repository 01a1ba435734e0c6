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
    blocker.write_text("not a folder")  # the cache root cannot be created, nor the temp one
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(shipped.tempfile, "gettempdir", lambda: str(blocker))
    assert len(shipped.shipped_fingerprint()) == 16


def test_a_home_cache_that_cannot_be_used_falls_back_to_a_private_temp_folder(tmp_path, monkeypatch):
    """`docker run --user UID` (HOME=/, no passwd entry), a read-only home, HOME set empty: the exports and the cat
    check go to this user's private temp folder, not nowhere (the cat check was then off: a cat got an age) and
    not the working folder; an export made ahead where the home cache is read-only is still read there; a temp
    folder of that name that another user made is not used."""
    from pathlib import Path

    monkeypatch.setattr(shipped.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    temp = tmp_path / "tmp" / f"agelens-{os.getuid()}" / "onnx"
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))  # cannot be made, even by root
    assert shipped.onnx_cache_root() == temp and oct(temp.parent.stat().st_mode)[-3:] == "700"
    assert shipped.cached_file("x.onnx") == temp / "x.onnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "")
    assert shipped.onnx_cache_root() == temp
    monkeypatch.delenv("HOME")

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert shipped.onnx_cache_root() == temp
    temp.parent.chmod(0o755)  # opened up since: closed again
    assert shipped.onnx_cache_root() == temp and oct(temp.parent.stat().st_mode)[-3:] == "700"
    ahead = tmp_path / "baked" / "agelens" / "onnx"  # made ahead (a Docker image's build), then the file found there
    (ahead / "imagenet-v1.onnx").parent.mkdir(parents=True)
    (ahead / "imagenet-v1.onnx").write_bytes(b"graph")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "baked"))
    assert shipped.cached_file("imagenet-v1.onnx") == ahead / "imagenet-v1.onnx"
    monkeypatch.setattr(shipped.os, "getuid", lambda: 4242)  # the folder is someone else's: not used
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    assert shipped.onnx_cache_root() == blocker / "cache" / "agelens" / "onnx"
