"""Values pinned by hand where a mutation audit changed the pipeline's output unnoticed: each file's own record in
a batch, every file of a job, CSV columns, 16-bit and transparent images, the smallest images, box geometry, the
learning-rate schedule."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from agelens.errors import ImageError, NoFaceError


@pytest.fixture(scope="module")
def estimator():
    from agelens import AgeEstimator

    return AgeEstimator.from_pretrained()


def test_each_file_of_a_batch_keeps_its_own_answer_and_none_is_dropped(tmp_path, estimator):
    """9 different faces, batches of 4 faces and chunks of 8 files: a record mixed up with another file's, or a
    file left out at a chunk's edge, shows."""
    from agelens.inference.stream import CHUNK, answer_files
    from conftest import utk_faces

    files = sorted(str(p) for p in utk_faces(tmp_path / "u", CHUNK + 1).iterdir())
    solo = [estimator.predict(f, detect=False)[0].age for f in files]
    assert len({round(a) for a in solo}) >= 3  # the faces read differently, so a mix-up would show
    for recs in (list(estimator.predict_many(files, detect=False, workers=0, batch_size=4)),
                 answer_files(estimator, files, False)):  # what a pipeline worker or a Ray actor sends back
        assert [r["file"] for r in recs] == files
        assert [r["faces"][0]["age"] for r in recs] == pytest.approx(solo, abs=0.01)


def test_csv_columns_hold_what_their_names_say():
    from agelens.inference.stream import CSV_COLUMNS, csv_rows

    face = {"box": [1.0, 2.0, 3.0, 4.0], "age": 30.0, "interval": [20.0, 40.0], "occluded": False,
            "occlusion_score": 0.1, "model": "teacher", "detection": "padded"}
    row = dict(zip(CSV_COLUMNS, csv_rows({"file": "a.jpg", "faces": [face], "error": None})[0], strict=True))
    assert row == {"file": "a.jpg", "face": 0, "x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0, "age": 30.0, "low": 20.0,
                   "high": 40.0, "occluded": False, "occlusion_score": 0.1, "model": "teacher", "detection": "padded",
                   "error": ""}
    bad = csv_rows({"file": "b.jpg", "faces": [], "error": "b.jpg: not a recognised image format"})
    assert bad == [["b.jpg", *[""] * (len(CSV_COLUMNS) - 2), "b.jpg: not a recognised image format"]]


def test_an_error_names_its_file_once():
    from agelens.inference.stream import _error

    assert _error("a.jpg", ImageError("a.jpg: bad")) == "a.jpg: bad"
    assert _error("a.jpg", ImageError("bad")) == "a.jpg: bad"
    assert _error("a.jpg", OSError("disk")) == "a.jpg: OSError: disk"


def _png(arr: np.ndarray, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG", **kw)
    return buf.getvalue()


def test_16_bit_images_are_stretched_from_their_own_range_in_every_row():
    from agelens.imageio import decode_image

    ramp = np.repeat(np.linspace(1000, 3000, 50).astype(np.uint16)[None], 1100, 0)  # 1,100 rows: three bands
    rgb = decode_image(_png(ramp), "r.png")
    assert rgb.min() == 0 and rgb.max() == 255
    expect = np.round((ramp[700].astype(float) - 1000) * 255 / 2000).astype(int)
    assert np.abs(rgb[700, :, 0].astype(int) - expect).max() <= 1 and (rgb[1099] == rgb[0]).all()
    small = decode_image(_png(np.array([[0, 12, 25]] * 4, np.uint16)), "s.png")  # a span where 255 / 25 rounds down
    assert small[0, :, 0].tolist() == [0, 122, 255]


def test_transparency_reads_as_white_in_palette_images_and_bgra_arrays():
    from agelens.imageio import array_to_rgb, decode_image

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.info["transparency"] = 1
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=1)
    assert (decode_image(buf.getvalue(), "p.png") == 255).all()
    bgra = np.zeros((4, 4, 4), np.uint8)  # black, fully transparent
    assert (array_to_rgb(bgra, channels="bgr") == 255).all()


def test_images_too_small_for_a_face_are_refused(estimator):
    from agelens.imageio import decode_image

    with pytest.raises(ImageError, match="too small"):
        decode_image(_png(np.zeros((100, 1, 3), np.uint8)), "thin.png")
    with pytest.raises(NoFaceError, match="under 16 px"):
        estimator.predict(np.zeros((12, 200, 3), np.uint8))


def test_the_largest_face_and_boxes_brought_back_from_a_shrunk_copy():
    from types import SimpleNamespace

    from agelens.faces.detect import box_back
    from agelens.faces.prepare import largest_face

    small, big = SimpleNamespace(box=(0, 0, 10, 10)), SimpleNamespace(box=(0, 0, 100, 100))
    assert largest_face([small, big]) is big and largest_face([big, small]) is big
    assert box_back((0, 0, 50, 80), 1.0, (60, 100)) == (0.0, 0.0, 50.0, 60.0)  # clipped to the height, 60
    assert box_back((10, 10, 30, 30), 0.5, (1000, 1000), dx=4) == (28.0, 20.0, 68.0, 60.0)


def test_learning_rate_warms_up_then_follows_the_cosine():
    from agelens.config import load_config
    from agelens.train.engine import _lr_factor

    cfg = load_config(None, ["train.epochs=10", "train.warmup_epochs=2", "train.scheduler=cosine"])
    assert _lr_factor(cfg, 0, 0.5) == pytest.approx(0.25)
    assert _lr_factor(cfg, 2, 0.0) == pytest.approx(1.0)
    assert _lr_factor(cfg, 6, 0.0) == pytest.approx(0.5)
    assert _lr_factor(cfg, 10, 0.0) == pytest.approx(0.0, abs=1e-9)


def _face(box, kp=None):
    from agelens.faces.detect import Face

    x1, y1, x2, y2 = box
    kp = np.array([[x1 + 0.3 * (x2 - x1), y1 + 0.4 * (y2 - y1)]] * 4, np.float32) if kp is None else kp
    return Face(tuple(float(v) for v in box), 0.9, kp)


def test_tiles_map_faces_back_to_the_image_and_drop_oversized_ones(monkeypatch):
    """The detector (stubbed) finds one face in every tile: mapped back from tiles of a halved copy, its box and
    keypoints are in the image's pixels, keypoints inside the box; a face taller than max_face of the image is
    dropped however narrow."""
    from agelens.faces import detect as D

    an = D.FaceAnalyzer()
    monkeypatch.setattr(an, "detect", lambda tile: [_face((10, 10, 40, 40))])
    img = np.zeros((2400, 2400, 3), np.uint8)
    faces = an.detect_tiled(img, 2, halved=True)
    assert faces and all(f.box[0] <= k[0] <= f.box[2] and f.box[1] <= k[1] <= f.box[3]
                         for f in faces for k in f.keypoints)
    widths = {round(f.box[2] - f.box[0]) for f in faces}
    assert widths <= {60, 120, 240} and widths != set()  # 30 px on a copy halved once or more
    monkeypatch.setattr(an, "detect", lambda tile: [_face((0, 0, 20, tile.shape[0]))])  # thin, the tile's height
    assert an.detect_tiled(np.zeros((400, 400, 3), np.uint8), 2, max_face=0.5) == []


def test_the_padded_retry_maps_boxes_and_keypoints_back_to_a_non_square_image(monkeypatch):
    from agelens.faces import detect as D

    an = D.FaceAnalyzer()
    img = np.zeros((100, 200, 3), np.uint8)  # 200 wide, 100 high
    p, scale = 50, 0.5  # a border of 50 px around the image shrunk to half (as for a large image)

    def on_padded(padded):
        kp = np.array([[p + 50.0 * scale, p + 40.0 * scale]] * 4, np.float32)
        return [_face((p - 10, p - 10, p + 200 * scale + 10, p + 100 * scale + 10), kp)]

    monkeypatch.setattr(an, "detect", on_padded)
    monkeypatch.setattr(D, "pad_border_capped", lambda rgb: (np.zeros((10, 10, 3), np.uint8), p, scale))
    faces = an._padded_faces(img)[0]
    assert faces[0].box == (0.0, 0.0, 200.0, 100.0) and faces[0].detection == "padded"
    assert np.allclose(faces[0].keypoints, [[50.0, 40.0]] * 4)


def test_a_tile_face_overlapping_a_found_face_is_not_added_again(monkeypatch):
    from agelens.faces import detect as D

    an = D.FaceAnalyzer()
    tile = _face((70, 0, 170, 100))  # IoU 0.18 with the found face
    monkeypatch.setattr(an, "detect_tiled", lambda rgb, n, halved=False: [tile])
    monkeypatch.setattr(an, "_with_mesh", lambda rgb, faces: faces)
    monkeypatch.setattr(an, "_verified", lambda rgb, faces, *a: faces)
    img = np.zeros((400, 400, 3), np.uint8)
    assert an._tile_faces(img, 3, [_face((0, 0, 100, 100))], (None, 0.5), 256, False) == []
    assert an._tile_faces(img, 3, [_face((300, 300, 380, 380))], (None, 0.5), 256, False) == [tile]


def test_the_file_size_guard_and_the_rows_a_cut_jpeg_lacks(tmp_path, monkeypatch):
    import agelens.imageio as io_
    from agelens.errors import ImageTooLargeError

    f = tmp_path / "a.png"
    f.write_bytes(b"x" * 11)
    monkeypatch.setattr(io_, "MAX_FILE_BYTES", 10)
    with pytest.raises(ImageTooLargeError, match="the file is 0 MiB, over the 0 MiB"):  # from stat(), before reading
        io_.read_file(f)
    rgb = np.full((100, 8, 3), 7, np.uint8)
    rgb[:90] = np.arange(8, dtype=np.uint8)[None, :, None]  # 90 rows of detail, then 10 flat rows: what a cut leaves
    assert io_._missing_rows(rgb) == 10


def test_a_resumed_csv_counts_earlier_failures_but_not_the_last_file_it_redoes(tmp_path):
    """The last file of a cut CSV is answered again (its rows may be cut between faces), so it is no earlier
    failure; a failure before it is one (`--resume` says how many failed before, `--retry-failed` redoes them)."""
    from agelens.inference.stream import CSV_COLUMNS, csv_rows, open_sink

    ok = {"file": "a.jpg", "faces": [{"box": [0, 0, 9, 9], "age": 30.0, "interval": [20, 40], "occluded": False,
                                      "occlusion_score": 0.0, "model": "teacher", "detection": "detector"}],
          "error": None}
    bad = {"file": "b.jpg", "faces": [], "error": "b.jpg: not a recognised image format"}

    def written(*records):
        import csv

        f = tmp_path / f"{len(list(tmp_path.iterdir()))}.csv"
        with f.open("w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(CSV_COLUMNS)
            for r in records:
                w.writerows(csv_rows(r))
        return f

    sink = open_sink(written(ok, bad), "csv", resume=True)
    try:
        assert sink.done == {"a.jpg"} and sink.failed_done == set()
    finally:
        sink.close()
    sink = open_sink(written(bad, ok), "csv", resume=True)
    try:
        assert sink.done == {"b.jpg"} and sink.failed_done == {"b.jpg"}
    finally:
        sink.close()
