"""What users hand the tool besides plain image files: links, pipes, odd folders, float images, resumed jobs
spelled another way (no models needed)."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agelens.errors import AgelensError, ImageError
from agelens.imageio import load_image
from agelens.inference.draw import draw
from agelens.inference.inputs import expand_inputs, job_files, not_done
from agelens.utils import atomic_write_text


def test_atomic_write_follows_links_where_asked_and_writes_pipes_in_place(tmp_path):
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_text(link, "through the link", follow_links=True)  # a user's -o: the link's target is written
    assert link.is_symlink() and target.read_text() == "through the link"
    atomic_write_text(link, "in place of the link")  # the default (checkpoints, caches): a shared target is left alone
    assert not link.is_symlink() and link.read_text() == "in place of the link" and target.read_text() == "through the link"
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
    # a glob: the loop's copies once, a folder it matches read as a folder
    hits = [Path(f).relative_to(photos).as_posix() for f in expand_inputs([str(photos / "**" / "*.jpg")])]
    assert hits == ["a.jpg"]
    assert [Path(f).name for f in expand_inputs([str(photos / "s*")])] == ["c.JPG"]


def test_a_file_named_more_than_once_is_answered_once(tmp_path, monkeypatch):
    """`photos/ photos/a.jpg ./photos/a.jpg`: before, a.jpg three times (three records, and three faces in the job's
    age mix); a link under another name stays an input of its own."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (photos / name).write_bytes(b"x")
    (photos / "a_link.jpg").symlink_to(photos / "a.jpg")
    monkeypatch.chdir(tmp_path)
    repeated: list[str] = []
    got = expand_inputs(["photos", "photos/a.jpg", "./photos/a.jpg", str(photos / "b.jpg"), "photos/*.jpg"], repeated)
    assert [Path(f).name for f in got] == ["a.jpg", "a_link.jpg", "b.jpg"]
    assert len(repeated) == 5  # the glob itself reads a file and a link to it once (`_unique`)


def test_hidden_files_and_folders_are_left_out_and_unreadable_folders_reported(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    for p in ("a.jpg", ".thumbnails/a.jpg", "._a.jpg", "@eaDir/.x.jpg", "locked/b.jpg"):
        (photos / p).parent.mkdir(parents=True, exist_ok=True)
        (photos / p).write_bytes(b"x")
    real_walk = os.walk

    def walk(top, **kw):  # root reads every folder: a folder it cannot read is made to fail here
        for root, dirs, names in real_walk(top, **kw):
            if root.endswith("locked"):
                kw["onerror"](PermissionError(13, "Permission denied", root))
                continue
            yield root, dirs, names

    monkeypatch.setattr(os, "walk", walk)
    names = [Path(f).relative_to(photos).as_posix() for f in expand_inputs([str(photos)])]
    assert names == ["a.jpg", "locked"]  # the locked folder stands for itself, so that predict reports it


def test_a_resumed_job_skips_the_same_files_however_its_folder_is_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = {str(tmp_path / "many" / "a.jpg"), "many/./b.jpg"}
    assert not_done(["many/a.jpg", str(tmp_path / "many" / "b.jpg"), "many/c.jpg"], done) == ["many/c.jpg"]
    assert not_done(["x.jpg"], set()) == ["x.jpg"]
    (tmp_path / "many").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "many")  # the folder resumed through a link to it
    assert not_done(["link/a.jpg", "link/c.jpg"], done) == ["link/c.jpg"]


def test_predict_many_names_images_in_memory_as_the_wrong_input():
    rgb = np.zeros((8, 8, 3), np.uint8)
    for bad in (rgb, rgb.tobytes(), Image.fromarray(rgb), (a for a in [rgb]), [Path("a.jpg"), 3]):
        with pytest.raises(TypeError, match="predict_many reads image files"):
            job_files(bad)
    with pytest.raises(TypeError, match="got an item of type NoneType"):  # before: os.fspath's own TypeError
        job_files(["a.jpg", None])
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
    with pytest.raises(AgelensError, match="expected pixel values in 0-255"):
        draw(img.astype(np.float32) * 2, [face])


def _gone(pid: int) -> bool:
    """The process has ended (a zombie waiting to be reaped counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_worker_processes_end_when_the_job_is_killed():
    import subprocess
    import sys
    import time

    script = ("import os, time\nfrom agelens import parallel\n"
              "ex = parallel._pool(1, parallel.worker_context(), None, ())\n"
              "print(ex.submit(os.getpid).result(), flush=True)\ntime.sleep(120)\n")
    job = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker = int(job.stdout.readline())
    assert not _gone(worker)
    job.kill()  # kill -9: nothing of the job runs again; its worker must notice on its own
    job.wait()
    deadline = time.monotonic() + 20
    while not _gone(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(worker)


def test_csv_resume_redoes_a_file_cut_between_its_faces(tmp_path):
    from agelens.inference.stream import CSV_COLUMNS, StreamSink

    face = {"box": [1, 2, 3, 4], "age": 30.0, "interval": [20, 40], "occluded": False, "occlusion_score": 0.1,
            "model": "teacher", "detection": "detector"}
    sink = StreamSink(tmp_path / "out.csv", "csv")
    sink.write({"file": "a.jpg", "faces": [face], "error": None})
    sink.write({"file": "b.jpg", "faces": [face, face], "error": None})
    sink.close()
    full = (tmp_path / "out.csv").read_text()
    cut = full[:full.rfind("b.jpg")]  # cut between b.jpg's two faces
    (tmp_path / "out.csv").write_text(cut)
    again = StreamSink(tmp_path / "out.csv", "csv", resume=True)
    assert again.done == {"a.jpg"}  # b.jpg is answered again, if the job holds it
    again.write({"file": "b.jpg", "faces": [face, face], "error": None})  # its cut row goes first
    again.close()
    assert (tmp_path / "out.csv").read_text() == full
    (tmp_path / "out.csv").write_text(cut)
    other = StreamSink(tmp_path / "out.csv", "csv", resume=True)  # a job without b.jpg: its row stays
    other.write({"file": "c.jpg", "faces": [face], "error": None})
    other.close()
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0] == ",".join(CSV_COLUMNS) and [r.split(",")[0] for r in rows[1:]] == ["a.jpg", "b.jpg", "c.jpg"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_retry_takes_out_the_failed_records_of_the_job_s_files_only(tmp_path, fmt):
    """--resume --retry-failed: the records of files that failed (and that this job names) are taken out of the
    output, so the job answers them again; a failed file this job does not name keeps its record."""
    from agelens.inference.inputs import in_job
    from agelens.inference.stream import open_sink

    face = {"box": [1.0, 2.0, 3.0, 4.0], "age": 30.0, "interval": [20.0, 40.0], "occluded": False,
            "occlusion_score": 0.1, "model": "teacher", "detection": "detector"}
    d = tmp_path / "in"
    out = tmp_path / f"out.{fmt}"
    recs = [{"file": str(d / "a.jpg"), "faces": [face], "error": None},
            {"file": str(d / "b.jpg"), "faces": [], "error": "ImageError: cannot read it"},
            {"file": str(d / "other.jpg"), "faces": [], "error": "NoFaceError: no face found"},
            {"file": str(d / "c.jpg"), "faces": [face, face], "error": None}]
    last = {str(d / "c.jpg")} if fmt == "csv" else set()  # a resumed CSV's last file is redone (cut faces)
    sink = open_sink(out, fmt)
    for r in recs:
        sink.write(r)
    sink.close()
    plain = open_sink(out, fmt, resume=True)
    plain.close()
    assert plain.done == {r["file"] for r in recs} - last and not plain.retried
    assert plain.failed_done == {str(d / "b.jpg"), str(d / "other.jpg")}  # what the resumed job says failed before
    job = [str(d / n) for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")]
    sink = open_sink(out, fmt, resume=True, retry=in_job(job))
    assert sink.retried == {str(d / "b.jpg")} and sink.failed_done == {str(d / "other.jpg")}
    assert sink.done == {str(d / n) for n in ("a.jpg", "c.jpg", "other.jpg")} - last
    sink.write({"file": str(d / "b.jpg"), "faces": [face], "error": None})
    sink.close()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        files = pq.read_table(out).column("file").to_pylist()
    elif fmt == "jsonl":
        files = [json.loads(x)["file"] for x in out.read_text().splitlines()]
    else:
        files = [r.split(",")[0] for r in out.read_text().splitlines()[1:]]
    kept = ["a.jpg", "other.jpg"] + ["c.jpg"] * (2 if fmt == "csv" else 1)  # a CSV row per face
    assert files == [str(d / n) for n in [*kept, "b.jpg"]], files
    again = open_sink(out, fmt, resume=True, retry=in_job(job))  # nothing failed among the job's files now
    again.close()
    assert not again.retried


def test_a_kill_between_the_parquet_swaps_leaves_the_rewritten_output(tmp_path):
    from agelens.inference.stream import finish_rewrite

    out = tmp_path / "out"
    (tmp_path / ".out.old").mkdir()  # moved aside by the rewrite
    (tmp_path / ".out.old" / "part-00000.parquet").write_bytes(b"old")
    (tmp_path / ".out.rewrite").mkdir()  # complete, not yet moved in
    (tmp_path / ".out.rewrite" / "part-00000.parquet").write_bytes(b"new")
    finish_rewrite(out)
    assert (out / "part-00000.parquet").read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / ".out.rewrite").mkdir()  # an unfinished rewrite beside a whole output: removed
    finish_rewrite(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_broken_link_in_a_folder_is_reported(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(b"x")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert [Path(f).name for f in expand_inputs([str(tmp_path)])] == ["gone.jpg", "ok.jpg"]
    with pytest.raises(ImageError, match="a link to .*nowhere.jpg, which is not there"):
        load_image(tmp_path / "gone.jpg")


def test_streamed_results_into_a_pipe_and_the_bar_off_stdout(tmp_path, capsys):
    """`agelens predict photos/ -f jsonl -o /dev/stdout | ...`: a pipe cannot be fsynced ("Invalid argument" ended
    the job at its first sync), and the progress bar drawn on stdout went into the results."""
    from agelens.inference.stream import StreamSink
    from agelens.progress import track

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[str] = [""]

    def read() -> None:  # the sink opens its output twice (emptied, then appended to): a reader reopens as a shell's does
        while got[0].count("\n") < 3:
            got[0] += fifo.read_text()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sink = StreamSink(fifo, "jsonl")
    sink.FSYNC_S = 0.0  # a sync due at every line
    for k in range(3):
        sink.write({"file": f"{k}.jpg", "faces": [], "error": None})
    sink.close()
    reader.join(10)
    assert [line[:14] for line in got[0].splitlines()] == ['{"file": "0.jp', '{"file": "1.jp', '{"file": "2.jp']
    assert list(track(range(3), total=3, description="predicting")) == [0, 1, 2]
    out = capsys.readouterr()
    assert out.out == "" and "predicting" in out.err


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_two_jobs_cannot_write_one_output(tmp_path, fmt):
    from agelens.inference.stream import open_sink

    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / ("out" if fmt == "parquet" else "out.jsonl")
    first = open_sink(out, fmt)
    with pytest.raises(AgelensError, match="being written by another agelens job"):
        open_sink(out, fmt, resume=True)
    first.write({"file": "a.jpg", "faces": [], "error": "no face found"})
    first.close()
    again = open_sink(out, fmt, resume=True)  # free once the first job has ended
    assert again.done == {"a.jpg"}
    again.close()


def test_progress_to_a_log_file_is_plain_lines_as_it_goes(monkeypatch, capsys):
    import time

    from agelens import progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.05)

    def slow():
        for i in range(4):
            time.sleep(0.04)
            yield i

    got = []
    for x in progress.track(slow(), total=4, description="predicting"):
        got.append((x, capsys.readouterr().err))  # what the log holds as each item comes
    lines = "".join(e for _, e in got).splitlines() + capsys.readouterr().err.splitlines()
    assert [x for x, _ in got] == [0, 1, 2, 3]
    assert any(e.startswith("predicting: ") and "/4 in " in e for _, e in got[:3])  # before the end
    assert lines[-1].startswith("predicting: 4/4 in ") and "━" not in "".join(lines)


def test_a_resumed_csv_keeps_its_lock_after_rewriting_its_last_file(tmp_path):
    from agelens.errors import AgelensError
    from agelens.inference.stream import open_sink

    out = tmp_path / "out.csv"
    first = open_sink(out, "csv")
    first.write({"file": "a.jpg", "faces": [], "error": "no face found"})
    first.close()
    again = open_sink(out, "csv", resume=True)  # a.jpg, the last file, is answered again: its rows rewritten
    again.write({"file": "a.jpg", "faces": [], "error": "no face found"})
    with pytest.raises(AgelensError, match="being written by another agelens job"):
        open_sink(out, "csv", resume=True)
    again.close()


def _photo_jpeg(size=(256, 256), **kw) -> bytes:
    import io

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size[1], :size[0]]
    img = np.stack([(xx * 255 // size[0]), (yy * 255 // size[1]), (xx + yy) % 256], -1).astype(np.uint8)
    img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def test_a_jpeg_cut_short_is_read_when_only_a_sliver_is_missing(tmp_path):
    """An interrupted copy: a JPEG without its end marker is read whole; one cut at a third is refused, saying
    how much of it is missing (before: both "cannot decode image (image file is truncated ...)")."""
    good = _photo_jpeg()
    (tmp_path / "noeoi.jpg").write_bytes(good[:-2])
    (tmp_path / "third.jpg").write_bytes(good[: len(good) // 3])
    whole = load_image_bytes(good)
    assert np.array_equal(load_image(tmp_path / "noeoi.jpg"), whole)
    with pytest.raises(ImageError, match=r"third.jpg: the file is cut short \(truncated\): the last \d+ of its 256 "
                                         r"rows \(\d+%\) are missing"):
        load_image(tmp_path / "third.jpg")


def load_image_bytes(data: bytes) -> np.ndarray:
    from agelens.imageio import decode_image

    return decode_image(data)


def test_oversized_images_and_odd_paths_get_messages_that_say_what_is_wrong(tmp_path):
    """A PNG past Pillow's own bomb check names its pixel count; a loop of links is called one (before: "a link to
    b.jpg, which is not there" though b.jpg is there); an empty path is named as such (before: "." is a folder)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    # a 20000 x 20000 PNG header (400 MP) with one row of data: refused from the header
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00" * 60001)) + chunk(b"IEND", b""))
    (tmp_path / "bomb.png").write_bytes(png)
    with pytest.raises(ImageError, match=r"bomb.png: image of 400,000,000 pixels \(from its header\), over the "
                                         r"60,000,000-pixel limit"):
        load_image(tmp_path / "bomb.png")
    os.symlink("b.jpg", tmp_path / "a.jpg")
    os.symlink("a.jpg", tmp_path / "b.jpg")
    with pytest.raises(ImageError, match="a loop of links"):
        load_image(tmp_path / "a.jpg")
    with pytest.raises(ImageError, match="an empty path"):
        load_image("")


def test_a_pillow_image_that_cannot_be_read_is_an_image_error(tmp_path):
    import io

    from agelens.imageio import read_pil

    good = _photo_jpeg()
    with pytest.raises(ImageError, match="cannot decode image"):
        read_pil(Image.open(io.BytesIO(good[: len(good) // 3])))


def test_draw_reads_a_photo_over_the_pixel_limit_as_predict_does(tmp_path, monkeypatch):
    """`draw(path, faces)` on a photo predict answers at a reduced decode draws there, boxes (file pixels) scaled
    (before: ImageTooLargeError)."""
    import agelens.imageio as imageio

    p = tmp_path / "big.jpg"
    p.write_bytes(_photo_jpeg((4000, 3000)))
    monkeypatch.setattr(imageio, "MAX_PIXELS", 5_000_000)
    out = draw(p, [{"box": [400, 400, 1200, 1200], "age": 30.0, "occluded": False}])
    assert out.shape == (1500, 2000, 3)
    assert (out[200, 300:400] == (0, 200, 0)).all()  # the top edge at y = 400 / 2


def test_a_device_or_pipe_behind_a_file_name_is_refused_not_read(tmp_path):
    """/dev/zero never ends and a named pipe blocks forever: both are named, not read (in a child process, so that
    a regression fails the test instead of hanging it)."""
    import subprocess
    import sys

    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    code = ("import sys\nfrom agelens.imageio import read_file\nfor f in sys.argv[1:]:\n    try:\n"
            "        read_file(f)\n    except Exception as e:\n        print(type(e).__name__, e)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "zero.jpg"), str(tmp_path / "pipe.jpg")],
                       capture_output=True, text=True, timeout=60)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ImageError") and "not a regular file" in lines[0] and "behind a link" in lines[0]
    assert lines[1].startswith("ImageError") and "not a regular file" in lines[1]
    # the pipe the shell hands over for `agelens predict <(curl -s URL)` is read
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    r = subprocess.run(["bash", "-c", f'{sys.executable} -c "{code}" <(cat {png})'], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr  # no error printed: the bytes were read


def test_a_jpeg_whose_header_claims_more_than_any_photo_is_refused_before_decoding():
    import io

    from agelens.errors import ImageTooLargeError
    from agelens.imageio import MAX_JPEG_PIXELS, decode_reduced

    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length (2), precision (1), height (2), width (2)
    data[sof + 5:sof + 9] = (15000).to_bytes(2, "big") + (15000).to_bytes(2, "big")  # 225 MP, 1/8 of it 3.5 MP
    assert MAX_JPEG_PIXELS < 15000 * 15000
    with pytest.raises(ImageTooLargeError, match="15000x15000"):
        decode_reduced(bytes(data))


def test_a_file_that_breaks_the_decoder_in_an_unexpected_way_is_an_image_error(monkeypatch):
    """Broken EXIF or a plugin's odd exception (struct.error, TypeError, NotImplementedError in fuzzed files) is
    the file's fault: ImageError naming it, or the pixels without the orientation where only EXIF is broken."""
    import io
    import struct

    from PIL import ImageFile, ImageOps

    from agelens.imageio import decode_image

    buf = io.BytesIO()
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(buf, "PNG")

    def bad_exif(im, *a, **k):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(ImageOps, "exif_transpose", bad_exif)
    assert decode_image(buf.getvalue(), "x.png").shape == (20, 24, 3)  # pixels as stored

    def bad_load(self, *a, **k):
        raise NotImplementedError("a format this plugin cannot decode")

    monkeypatch.setattr(ImageFile.ImageFile, "load", bad_load)
    with pytest.raises(ImageError, match="x.png: cannot decode image"):
        decode_image(buf.getvalue(), "x.png")


def test_only_photo_formats_are_opened():
    """EPS is not opened (Pillow reads it by running Ghostscript where that is installed); photo formats are."""
    import io

    from agelens.imageio import decode_image

    for fmt, ok in (("EPS", False), ("PNG", True), ("TIFF", True), ("PPM", True), ("GIF", True)):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(buf, fmt)
        if ok:
            assert decode_image(buf.getvalue(), f"x.{fmt}").shape == (8, 8, 3)
        else:
            with pytest.raises(ImageError, match="not a recognised image format"):
                decode_image(buf.getvalue(), f"x.{fmt}")


def test_a_file_named_like_a_pattern_is_read_and_a_pattern_matching_nothing_is_reported(tmp_path):
    from agelens.inference.inputs import printable

    for name in ("a[1].jpg", "a1.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    assert expand_inputs([str(tmp_path / "a[1].jpg")]) == [str(tmp_path / "a[1].jpg")]  # the file, not a glob
    assert expand_inputs([str(tmp_path / "a[1].*")]) == [str(tmp_path / "a1.jpg")]  # a pattern: its matches
    nothing = str(tmp_path / "nope" / "*.jpg")
    assert expand_inputs([nothing]) == [nothing]  # kept, so that it is reported ("no file matches this pattern")
    assert printable(b"\xff.jpg".decode("utf-8", "surrogateescape")) == "\\xff.jpg"
