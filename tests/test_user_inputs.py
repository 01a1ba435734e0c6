"""What users hand the tool besides plain image files: links, pipes, odd folders, float images, resumed jobs
spelled another way (no models needed)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agelens.errors import ImageError
from agelens.imageio import load_image
from agelens.inference.draw import draw
from agelens.inference.inputs import expand_inputs, job_files, not_done
from agelens.utils import atomic_write_text


def test_atomic_write_follows_links_and_writes_pipes_in_place(tmp_path):
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_text(link, "through the link")
    assert link.is_symlink() and target.read_text() == "through the link"
    fifo = tmp_path / "fifo"  # as /dev/stdout in a pipe: nothing to swap, written in place
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    atomic_write_text(fifo, "into the pipe")
    reader.join(10)
    assert got == ["into the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(IsADirectoryError):
        atomic_write_text(tmp_path, "a folder is no file")


def test_folders_are_read_through_symlinks_each_once(tmp_path):
    photos, other = tmp_path / "photos", tmp_path / "other"
    (photos / "sub").mkdir(parents=True)
    other.mkdir()
    for p in (photos / "a.jpg", photos / "sub" / "c.JPG", other / "b.png", photos / "notes.txt"):
        p.write_bytes(b"x")
    (photos / "linked").symlink_to(other)
    (photos / "loop").symlink_to(photos)  # a link back up the tree ends
    names = [Path(f).relative_to(photos).as_posix() for f in expand_inputs([str(photos)])]
    assert names == ["a.jpg", "linked/b.png", "sub/c.JPG"]


def test_a_resumed_job_skips_the_same_files_however_its_folder_is_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = {str(tmp_path / "many" / "a.jpg"), "many/./b.jpg"}
    assert not_done(["many/a.jpg", str(tmp_path / "many" / "b.jpg"), "many/c.jpg"], done) == ["many/c.jpg"]
    assert not_done(["x.jpg"], set()) == ["x.jpg"]


def test_predict_many_names_images_in_memory_as_the_wrong_input():
    rgb = np.zeros((8, 8, 3), np.uint8)
    for bad in (rgb, rgb.tobytes(), Image.fromarray(rgb), (a for a in [rgb]), [Path("a.jpg"), 3]):
        with pytest.raises(TypeError, match="predict_many reads image files"):
            job_files(bad)
    assert job_files([Path("a.jpg"), "b.jpg"]) == ["a.jpg", "b.jpg"]


def test_float_images_and_folders_read_as_a_user_expects(tmp_path):
    g = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.float32) / 255  # a float TIFF of 0-1 values
    Image.fromarray(g, "F").save(tmp_path / "f.tif")
    assert np.array_equal(load_image(tmp_path / "f.tif")[..., 0], np.round(g * 255).astype(np.uint8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="is a directory with no image files"):
        load_image(tmp_path / "empty")
    with pytest.raises(ImageError, match="no file matches this pattern"):
        load_image(tmp_path / "*.jpg")
    img = np.full((40, 40, 3), 200, np.uint8)
    face = {"box": [5, 5, 30, 30], "age": 30.0, "occluded": False}
    assert np.array_equal(draw(img.astype(np.float32) / 255, [face]), draw(img, [face]))
    with pytest.raises(ValueError, match="expected uint8 pixel values"):
        draw(img.astype(np.float32) * 2, [face])
