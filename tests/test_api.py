"""The public API: AgeEstimator, FacePrediction, draw, BGR input."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

import agelens
from agelens.errors import AgelensError

AST_JPG = resources.files("agelens") / "assets" / "astronaut.jpg"


@pytest.fixture(scope="module")
def est():
    return agelens.AgeEstimator.from_pretrained(backend="torch")


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()


def test_public_names():
    assert {"AgeEstimator", "FacePrediction", "draw", "predict_many", "NoFaceError"} <= set(agelens.__all__)
    assert agelens.FacePrediction.__name__ == "FacePrediction"
    assert agelens.NoFaceError is __import__("agelens.errors").errors.NoFaceError  # what predict raises, at hand


def test_arrays_of_other_kinds_read_as_the_same_pixels(est, astronaut):
    """Grey, one-channel, RGBA / BGRA, 16-bit and 0-1 float arrays (OpenCV's and matplotlib's reads) are the image
    they hold, as their file would be; before, each was refused as "expected an RGB uint8 image"."""
    ages = lambda img, **k: [f.age for f in est.predict(img, **k)]  # noqa: E731
    want = ages(astronaut)
    opaque = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    assert ages(opaque) == want and ages(np.ascontiguousarray(opaque[..., [2, 1, 0, 3]]), channels="bgr") == want
    assert ages(astronaut / 255.0) == want and ages(astronaut.astype(np.uint16) * 257) == want
    assert ages(astronaut.astype(np.float32)) == want  # 0-255 floats
    grey = astronaut[..., 1]
    assert ages(grey) == ages(grey[..., None]) == ages(np.repeat(grey[..., None], 3, axis=2))
    clear = opaque.copy()
    clear[..., 3] = 0  # fully transparent: white, as a PNG's transparency is read
    assert (agelens.draw(clear, []) == 255).all()
    for bad, fragment in ((astronaut * 2.0, "expected pixel values in 0-255"), (astronaut[..., :2], "got shape"),
                          (astronaut.astype(np.complex64), "got shape")):
        with pytest.raises(AgelensError, match=fragment):
            est.predict(bad)


def test_common_mistakes_are_named(est, astronaut, tmp_path):
    with pytest.raises(TypeError, match="predict_many reads several"):
        est.predict([str(AST_JPG), str(AST_JPG)])
    with pytest.raises(agelens.ImageError, match="a URL; agelens reads files and does not download"):
        est.predict("https://example.com/face.jpg")
    with pytest.raises(agelens.NoFaceError):
        est.predict(np.full((120, 120, 3), 128, np.uint8))
    import io

    stream = io.BytesIO(AST_JPG.read_bytes())
    est.predict(stream)
    with pytest.raises(agelens.ImageError, match=r"already read to its end \(seek\(0\)"):
        est.predict(stream)  # a second read of the same stream
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "stages.pt").write_bytes(b"x")  # a distillation whose fine-tuning has not run
    with pytest.raises(AgelensError, match="holds no best.pt .* is its stage-wise student; give that file"):
        agelens.AgeEstimator.from_pretrained(str(tmp_path / "run"), backend="torch")


def test_predictions_compare_by_their_answer_and_the_estimator_pickles(est, astronaut):
    """Two reads of one image are equal (their timing aside); an estimator pickles as the recipe that built it, so
    a multiprocessing pool can take it (before: TypeError, cannot pickle an onnxruntime session or a lock)."""
    import pickle

    first = est.predict(astronaut)
    assert est.predict(astronaut) == first
    est.route = "teacher"
    try:
        copy = pickle.loads(pickle.dumps(est))
    finally:
        est.route = "auto"
    assert copy.route == "teacher" and copy.backend == est.backend and copy is not est
    est_teacher = [f.age for f in copy.predict(astronaut)]
    est.route = "teacher"
    try:
        assert est_teacher == [f.age for f in est.predict(astronaut)]
    finally:
        est.route = "auto"
    in_memory = agelens.AgeEstimator(est.teacher)
    with pytest.raises(AgelensError, match="cannot be pickled: build it in each process"):
        pickle.dumps(in_memory)
    with pytest.raises(AgelensError, match="route must be one of auto, teacher, student, got 'bogus'"):
        est.route = "bogus"  # before: taken, and every face then answered as under auto
    with pytest.raises(AgelensError, match="route=student needs a student model"):
        in_memory.route = "student"
    assert est.route == "auto" and in_memory.route == "auto"


def test_bgr_input_gives_the_rgb_answer(est, astronaut):
    rgb = est.predict(astronaut)
    bgr = est.predict(np.ascontiguousarray(astronaut[..., ::-1]), channels="bgr")
    assert [f.age for f in rgb] == [f.age for f in bgr] and [f.box for f in rgb] == [f.box for f in bgr]
    swapped = est.predict(np.ascontiguousarray(astronaut[..., ::-1]))  # BGR read as RGB: a different image
    assert swapped[0].age != rgb[0].age
    with pytest.raises(AgelensError, match="channels must be"):
        est.predict(astronaut, channels="hsv")


def test_a_face_answers_the_fields_the_cli_prints_as_attributes(est, astronaut):
    """face.occluded, .occlusion_score, .student_weight, .detection: the README's fields, also in Python (before:
    only in face.extra, and face.occluded raised AttributeError)."""
    f = est.predict(astronaut)[0]
    d = f.to_dict()
    assert (f.occluded, f.occlusion_score, f.student_weight, f.detection) == (
        d["occluded"], d["occlusion_score"], d["student_weight"], d["detection"])
    assert f.detection == "detector" and f.occluded is False
    assert est.predict(astronaut[:300, 100:350], detect=False)[0].detection == "whole-image"


def test_draw_marks_each_face_and_leaves_the_input_alone(est, astronaut):
    faces = est.predict(astronaut)
    before = astronaut.copy()
    out = agelens.draw(astronaut, faces)
    np.testing.assert_array_equal(astronaut, before)
    x1, y1, x2, y2 = (int(round(v)) for v in faces[0].box)
    assert tuple(out[y1, (x1 + x2) // 2]) == (0, 200, 0)  # the box's top edge, green in RGB
    bgr = agelens.draw(astronaut[..., ::-1], [f.to_dict() for f in faces], channels="bgr")
    np.testing.assert_array_equal(bgr[..., ::-1], out)  # dicts (JSON records) draw the same, in either order
    with pytest.raises(AgelensError, match=r"\(H, W, 3\) RGB, \(H, W, 4\) RGBA or \(H, W\) grey"):
        agelens.draw(astronaut[..., :2], faces)
    from PIL import Image

    from agelens.imageio import load_image

    on_file = est.predict(AST_JPG)  # a path or a Pillow image is read as predict reads it
    want = agelens.draw(load_image(str(AST_JPG)), on_file)
    np.testing.assert_array_equal(agelens.draw(AST_JPG, on_file), want)
    np.testing.assert_array_equal(agelens.draw(Image.open(AST_JPG), on_file), want)
    import io

    data = AST_JPG.read_bytes()  # the bytes or an open file, as predict takes them
    np.testing.assert_array_equal(agelens.draw(data, on_file), want)
    np.testing.assert_array_equal(agelens.draw(io.BytesIO(data), on_file), want)
    # a face crop whose box touches the top: the age is drawn inside the box, whole (before: half off the image)
    crop = np.full((1200, 1200, 3), 128, np.uint8)  # drawn at twice the size: a label 26 px tall
    drawn = agelens.draw(crop, [{"box": [100.0, 0.0, 1100.0, 1150.0], "age": 88.0, "occluded": False}])
    green = np.all(drawn == (0, 200, 0), axis=2)
    label = green[8:60, 108:300]  # under the box's top edge (4 px), inside it
    rows = np.flatnonzero(label.any(1)) + 8
    assert len(rows) and rows.min() > 8 and rows.max() < 59  # the digits whole, in the box


def test_a_folder_is_read_for_every_image_format_pillow_reads(tmp_path, astronaut):
    """A folder of browser downloads (.jfif), GIFs and AVIFs is expanded to them, and each decodes; other files are
    left out."""
    from PIL import Image, features

    from agelens.imageio import load_image
    from agelens.inference.inputs import expand_inputs

    im = Image.fromarray(astronaut[::4, ::4])
    names = ["a.jfif", "b.JPE", "c.gif"] + (["d.avif"] if features.check("avif") else [])
    fmt = {"jfif": "JPEG", "jpe": "JPEG", "gif": "GIF", "avif": "AVIF"}
    for name in names:
        im.save(tmp_path / name, fmt[name.rsplit(".", 1)[1].lower()])
    (tmp_path / "notes.txt").write_text("not an image")
    found = expand_inputs([str(tmp_path)])
    assert [p.rsplit("/", 1)[1] for p in found] == names
    assert all(load_image(p).shape == (128, 128, 3) for p in found)


def test_predict_many_takes_a_folder_a_glob_or_an_iterator(est, astronaut, tmp_path):
    import cv2

    for k in range(3):
        cv2.imwrite(str(tmp_path / f"p{k}.jpg"), astronaut[..., ::-1])
    (tmp_path / "notes.txt").write_text("not an image")
    by_folder = list(agelens.predict_many(tmp_path, estimator=est, batch_size=2))
    by_iter = list(agelens.predict_many((tmp_path / f"p{k}.jpg" for k in range(3)), estimator=est))
    by_glob = list(agelens.predict_many(str(tmp_path / "p*.jpg"), estimator=est))
    assert [r["file"] for r in by_folder] == [r["file"] for r in by_iter] == [r["file"] for r in by_glob]
    assert len(by_folder) == 3 and all(r["error"] is None and len(r["faces"]) >= 1 for r in by_folder)
    assert {r["faces"][0]["age"] for r in by_folder + by_iter} == {est.predict(tmp_path / "p0.jpg")[0].age}
    # the estimator's own method (issue 16's `AgeEstimator.predict_many(source)`): the same records, skip honoured
    by_method = list(est.predict_many(tmp_path, batch_size=2))
    assert [(r["file"], r["faces"][0]["age"]) for r in by_method] == [(r["file"], r["faces"][0]["age"])
                                                                     for r in by_folder]
    assert [r["file"] for r in est.predict_many(tmp_path, skip={by_folder[0]["file"]})] == \
        [r["file"] for r in by_folder[1:]]


def test_a_large_jpeg_is_decoded_at_the_size_the_faces_need(tmp_path, astronaut):
    """A 12 MP phone JPEG is decoded at half size (libjpeg's DCT scaling); other formats and smaller photos whole."""
    import cv2
    from PIL import Image

    from agelens.imageio import FACE_MIN_SIDE, decode_reduced, load_image

    big = cv2.resize(astronaut, (4032, 3024), interpolation=cv2.INTER_CUBIC)
    jpg = tmp_path / "phone.jpg"
    Image.fromarray(big).save(jpg, quality=90)
    rgb, scale = decode_reduced(jpg.read_bytes())
    assert rgb.shape == (1512, 2016, 3) and scale == 2.0 and max(rgb.shape) >= FACE_MIN_SIDE
    whole = load_image(jpg)
    assert whole.shape == (3024, 4032, 3)
    halved = cv2.resize(whole, (2016, 1512), interpolation=cv2.INTER_AREA)
    assert np.abs(rgb.astype(float) - halved).mean() < 2.0  # the same picture, anti-aliased
    ex = Image.Exif()
    ex[0x0112] = 6  # stored sideways: shown turned 90° clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(big))).save(tmp_path / "exif.jpg", quality=90, exif=ex)
    turned, s = decode_reduced((tmp_path / "exif.jpg").read_bytes())
    assert turned.shape == (1512, 2016, 3) and s == 2.0
    Image.fromarray(big).save(tmp_path / "phone.png")
    assert decode_reduced((tmp_path / "phone.png").read_bytes())[1] == 1.0  # only JPEG scales while decoding
    small = cv2.resize(astronaut, (2000, 1500))
    Image.fromarray(small).save(tmp_path / "small.jpg")
    assert decode_reduced((tmp_path / "small.jpg").read_bytes())[0].shape == (1500, 2000, 3)
    assert decode_reduced(jpg.read_bytes(), None)[1] == 1.0
    Image.fromarray(big).save(tmp_path / "camera.mpo", "MPO", save_all=True, append_images=[Image.fromarray(big)])
    assert decode_reduced((tmp_path / "camera.mpo").read_bytes())[0].shape == (1512, 2016, 3)  # a camera's JPEG


def test_the_pixel_limit_applies_to_the_pixels_decoded(monkeypatch, astronaut):
    """A JPEG over the limit that decodes reduced under it is read (a 108 or 200 MP phone photo, in miniature: the
    limit and Pillow's own bomb guard scaled down); whole, or in another format, it is refused before decoding."""
    import io

    import cv2
    from PIL import Image

    from agelens.errors import ImageTooLargeError
    from agelens.imageio import decode_reduced

    big = cv2.resize(astronaut, (2400, 1800), interpolation=cv2.INTER_LINEAR)  # 4.3 MP
    encoded = {}
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, fmt)
        encoded[fmt] = buf.getvalue()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # Pillow would refuse 4.3 MP from Image.open on
    rgb, scale = decode_reduced(encoded["JPEG"], min_side=300, max_pixels=1_000_000)
    assert rgb.shape == (225, 300, 3) and scale == 8.0  # 1/8: 67,500 pixels decoded
    with pytest.raises(ImageTooLargeError, match=r"2400x1800, 1200x900 decoded at 1/2, over the 1,000,000-pixel"):
        decode_reduced(encoded["JPEG"], min_side=1000, max_pixels=1_000_000)
    with pytest.raises(ImageTooLargeError, match="pixel limit"):
        decode_reduced(encoded["JPEG"], min_side=None, max_pixels=10_000_000)  # whole: Pillow's guard stands
    with pytest.raises(ImageTooLargeError, match="pixel limit"):
        decode_reduced(encoded["PNG"], min_side=300, max_pixels=10_000_000)  # only JPEG decodes reduced


def test_predict_on_a_large_jpeg_gives_boxes_in_the_files_pixels(est, astronaut, tmp_path):
    import cv2
    from PIL import Image

    from agelens.inference.stream import predict_stream

    big = cv2.resize(astronaut, (4096, 4096), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=92)
    on_file = est.predict(path)[0]  # decoded at 2048 px
    on_array = est.predict(big)[0]  # every pixel
    assert np.allclose(on_file.box, on_array.box, atol=8), (on_file.box, on_array.box)
    assert abs(on_file.age - on_array.age) < 2.0
    (rec, rgb), = predict_stream(est, [str(path)], workers=0, keep_rgb=True)  # kept to draw on: decoded whole,
    assert rgb.shape == big.shape and rec["faces"][0]["box"] == on_file.box  # the faces found as without it
    (rec, _), = predict_stream(est, [str(path)], workers=0)
    assert rec["faces"][0]["box"] == on_file.box


def test_a_heic_photo_is_read_or_refused_naming_the_extra(tmp_path, astronaut, monkeypatch):
    import sys

    from PIL import Image

    from agelens.errors import ImageError
    from agelens.imageio import load_image

    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    Image.fromarray(astronaut).save(tmp_path / "a.heic", quality=90)
    rgb = load_image(tmp_path / "a.heic")
    assert rgb.shape == astronaut.shape and np.abs(rgb.astype(float) - astronaut).mean() < 6
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if the `heif` extra were not installed
    with pytest.raises(ImageError, match=r"a.heic: a HEIC/HEIF photo; reading it needs pillow-heif"):
        load_image(tmp_path / "a.heic")


def test_a_jpeg_too_large_to_keep_whole_is_answered_and_drawn_at_its_reduced_size(monkeypatch, tmp_path, astronaut):
    """`--save-annotated` keeps images whole to draw on; one over the pixel limit whole (a 108 MP phone JPEG, in
    miniature: the limit scaled down) is kept at the size the faces need instead of refused, and its boxes, in the
    file's pixels, are drawn scaled to that size."""
    import cv2
    from PIL import Image

    import agelens.imageio as imageio
    from agelens.cli import _annotate
    from agelens.errors import ImageTooLargeError
    from agelens.inference.stream import decode_file

    big = np.full((1800, 2400, 3), 255, np.uint8)
    path = tmp_path / "phone.jpg"
    Image.fromarray(big).save(path)
    monkeypatch.setattr(imageio, "MAX_PIXELS", 1_000_000)
    monkeypatch.setattr(imageio, "FACE_MIN_SIDE", 300)
    with pytest.raises(ImageTooLargeError):
        imageio.load_image(path)
    rgb, scale = decode_file(str(path), reduce=False)
    assert rgb.shape == (225, 300, 3) and scale == 8.0 and imageio.image_size(path) == (2400, 1800)
    face = {"box": [800.0, 400.0, 1600.0, 1200.0], "age": 30.0, "occluded": False}
    _annotate(rgb, [face], tmp_path / "ann", str(path), 1, str(path))
    drawn = cv2.imread(str(tmp_path / "ann" / "00001_phone.jpg"))[..., ::-1]
    assert drawn.shape == (225, 300, 3)
    assert drawn[50, 150, 1] > 150 and drawn[50, 150, 0] < 100  # the top edge, green, at y = 400 / 8
    assert drawn[100, 150].min() > 200  # inside the box: untouched


def test_predict_takes_pillow_images_upright_and_file_bytes(est, astronaut, tmp_path):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer turns the stored pixels 90 degrees clockwise
    path = tmp_path / "turned.jpg"
    Image.fromarray(astronaut).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes(), quality=95)
    on_file = est.predict(path)
    import io

    with open(path, "rb") as fh:
        from_file_object = est.predict(fh)
    for other in (est.predict(Image.open(path)), est.predict(path.read_bytes()), from_file_object,
                  est.predict(io.BytesIO(path.read_bytes()))):
        assert [f.box for f in other] == [f.box for f in on_file] and [f.age for f in other] == [f.age for f in on_file]
    assert np.allclose(on_file[0].box, est.predict(astronaut)[0].box, atol=6)  # in the upright photo's pixels


def test_images_too_small_to_hold_a_face_are_refused_and_the_estimator_keeps_working(est, astronaut):
    from agelens.errors import ImageError

    for shape in [(0, 0, 3), (0, 10, 3), (1, 5, 3)]:
        for detect in (True, False):
            with pytest.raises(ImageError, match="too small to hold a face"):
                est.predict(np.zeros(shape, np.uint8), detect=detect)
    assert len(est.predict(np.ascontiguousarray(astronaut[30:300, 130:330]), detect=False)) == 1


def test_a_failed_landmark_graph_run_does_not_break_the_next():
    from skimage import data

    from agelens.errors import ImageError
    from agelens.faces.detect import FaceAnalyzer

    an = FaceAnalyzer()
    with pytest.raises(ImageError, match="landmark graph failed"):
        an.mesh(np.zeros((0, 0, 3), np.uint8))
    assert an.mesh(data.astronaut()) is not None


def test_what_is_no_image_is_a_type_error_naming_what_is(est):
    for bad in (None, 5, {"path": "x.jpg"}):
        with pytest.raises(TypeError, match=f"cannot read an image from {type(bad).__name__}: give a path"):
            est.predict(bad)


def test_threads_sharing_an_estimator_get_the_answers_of_one_thread(est, astronaut):
    from concurrent.futures import ThreadPoolExecutor

    images = [astronaut, np.ascontiguousarray(astronaut[:, ::-1]), astronaut[::2, ::2].copy(),
              np.ascontiguousarray(astronaut[40:400, 60:460])]

    def answers(img):
        return [(f.box, f.age, f.model) for f in est.predict(img)]

    serial = [answers(im) for im in images]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(answers, images * 3))
    assert threaded == serial * 3
    with ThreadPoolExecutor(2) as pool:  # predict_many beside predict
        many = pool.submit(lambda: [r["faces"][0]["age"] for r in est.predict_many([str(AST_JPG)] * 4)])
        one = [pool.submit(answers, images[0]) for _ in range(4)]
        assert len(set(many.result())) == 1 and all(f.result() == serial[0] for f in one)


@pytest.mark.parametrize("kwargs,fragment", [
    ({"route": "bogus"}, "route must be one of auto, teacher, student, got 'bogus'"),
    ({"device": "cuda", "backend": "onnx"}, "backend onnx runs on the CPU"),
    ({"device": "gpu"}, "'gpu' is not a torch device"),
    ({"device": None}, "device must be a string"),
    ({"threads": -1}, "threads must be a whole number of 1 or more"),
])
def test_settings_that_cannot_run_are_refused_before_any_model_loads(kwargs, fragment, monkeypatch):
    from agelens.inference import predictor

    monkeypatch.setattr(predictor.AgeEstimator, "from_onnx", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(AgelensError, match=fragment):
        agelens.AgeEstimator.from_pretrained(**kwargs)


def test_a_gpu_this_machine_lacks_is_an_agelens_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(AgelensError, match="torch sees no CUDA GPU here"):
        agelens.AgeEstimator.from_pretrained(device="cuda")


def test_a_thumbnail_too_small_to_hold_a_face_gets_no_face(est, astronaut):
    """An 8 x 8 thumbnail of the astronaut: the padded retry read it as a face (verified at 0.98) and gave it an
    age of 2.8, or 26.7 at another JPEG quality; now "no face found", saying why."""
    import io

    from PIL import Image

    from agelens.errors import NoFaceError

    buf = io.BytesIO()
    Image.fromarray(astronaut).resize((8, 8), Image.Resampling.LANCZOS).save(buf, "JPEG", quality=95)
    with pytest.raises(NoFaceError, match="8x8: under 16 px on a side"):
        est.predict(buf.getvalue())


def test_faces_come_largest_first(est):
    """A photo's faces came in the order the cascade found them (by detector score, tile faces last: a small face
    could come before the main one); now the largest first, so `predict(photo)[0]` is the photo's main face, in
    predict and predict_many alike (both through `predictions`)."""
    boxes = [[10.0, 10.0, 50.0, 50.0], [100.0, 10.0, 300.0, 210.0], [400.0, 10.0, 480.0, 90.0]]
    faces = [(b, 0.9, None, True, "detector", None) for b in boxes]
    r = {"age": np.array([5.0, 30.0, 60.0]), "spread": np.ones(3), "interval_z": np.full(3, 1.645),
         "occlusion_score": np.zeros(3), "occluded": np.zeros(3, bool), "model": np.array(["teacher"] * 3),
         "student_weight": np.zeros(3)}
    preds = est.predictions(faces, r, {})
    assert [p.age for p in preds] == [30.0, 60.0, 5.0] and preds[0].box == boxes[1]


def test_a_process_forked_after_the_face_graphs_started_says_so_instead_of_hanging():
    """A fork-started pool (Linux's default before Python 3.14) after the parent had run mediapipe's FaceMesh graph
    hung in the inherited graph, or aborted building a new one; now the child raises, naming spawn."""
    import subprocess
    import sys

    code = """
import os, sys, time
import numpy as np
from agelens.errors import AgelensError
from agelens.faces.detect import FaceAnalyzer
fa = FaceAnalyzer(fast=False)
fa.mesh(np.zeros((96, 96, 3), np.uint8))  # the graph starts in this process
pid = os.fork()
if pid == 0:
    said = 0
    for analyzer in (fa, FaceAnalyzer(fast=False)):  # the inherited graph, then a new one
        try:
            analyzer.mesh(np.zeros((96, 96, 3), np.uint8))
        except AgelensError as e:
            said += "spawn" in str(e)
    code = 3 if said == 2 else 4
    os._exit(code)
for _ in range(300):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.1)
os.kill(pid, 9)
sys.exit(9)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, (out.returncode, out.stderr[-1500:])  # 9: the child hung, as before


def test_every_public_step_takes_turns(est, astronaut):
    """faces_of / analyse_faces / analyse_crops take the estimator's lock as predict does (before: four threads
    calling faces_of changed 67-74 of 80 answers, LiteRT and mediapipe errors and silent wrong boxes)."""
    import threading

    rgb = astronaut
    faces = est.faces_of(rgb)
    for call in (lambda: est.faces_of(rgb), lambda: est.analyse_faces(faces), lambda: est.analyse_crops(
            np.stack([f[2] for f in faces]))):
        done = threading.Event()
        with est._lock:  # another caller holds the estimator
            t = threading.Thread(target=lambda c=call, d=done: (c(), d.set()))
            t.start()
            assert not done.wait(0.5)  # waits its turn
        t.join(60)
        assert done.is_set()


def test_an_endless_source_streams(est, tmp_path, monkeypatch):
    """predict_many read an iterator to its end before the first record: an endless one (a queue, a watched
    folder) filled memory and answered nothing; it is read a window at a time."""
    import itertools

    from PIL import Image
    from skimage import data

    import agelens.inference.inputs as inputs

    Image.fromarray(data.astronaut()).save(tmp_path / "a.jpg")
    monkeypatch.setattr(inputs, "WINDOW", 2, raising=False)
    seen = []

    def endless():  # long rather than endless: the code before read all of it, then answered
        for i in range(20000):
            seen.append(i)
            yield tmp_path / "a.jpg"

    records = list(itertools.islice(est.predict_many(endless()), 3))
    # each window of 2 names one file twice, answered once: 3 records from 3 windows
    assert [len(r["faces"]) for r in records] == [1, 1, 1] and len(seen) <= 6
    # the module-level engine too, and a list still answered whole
    records = list(itertools.islice(agelens.predict_many(endless(), estimator=est), 3))
    assert len(records) == 3 and all(r["error"] is None for r in records)
    assert len(list(est.predict_many([tmp_path / "a.jpg"] * 3))) == 1  # one file named thrice: answered once


def test_the_module_predict_many_takes_the_estimators_turn(est, tmp_path, monkeypatch):
    """agelens.predict_many(estimator=est) holds est's lock while it finds faces and makes a record, as
    est.predict_many does (before: faces were found without it, and threads sharing est got LiteRT errors and
    missing faces)."""
    from PIL import Image
    from skimage import data

    import agelens.inference.stream as stream

    Image.fromarray(data.astronaut()).save(tmp_path / "a.jpg")
    held, find = [], stream._find_chunk

    def watched(e, *args, **kwargs):
        held.append(e._lock._is_owned())
        return find(e, *args, **kwargs)

    monkeypatch.setattr(stream, "_find_chunk", watched)
    records = list(agelens.predict_many([tmp_path / "a.jpg"], estimator=est))
    assert len(records[0]["faces"]) == 1 and held == [True]
    held.clear()
    assert len(list(est.predict_many([tmp_path / "a.jpg"]))) == 1 and held == [True]
