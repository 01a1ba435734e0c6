"""Face detection (mediapipe short- and full-range) and 478-point FaceMesh landmarks, in image pixels.

Finding faces is a cascade that survives occlusion (sunglasses + mask, blocks over the eyes and mouth defeat the
detector on tight crops): the detector on the image; the detector on the image inside a 50 % border (a face that
fills the frame is what it misses most); the detector's occlusion-robust copy on the image, then on the padded copy
(reported as "detector" and "padded": `OCCLUDED_STEP`); FaceMesh alone; the whole image as one face crop; the
detector on overlapping tiles of the image (2 × 2, then 3 × 3, then in a large photo 6 × 6), for faces too small for
the detector's input (a masked crowd in a 256 px photo, one person far off in a phone photo; in an image 640 px or
longer the tiles come before the whole-image step); the robust copy on 2 × 2 tiles (an occluded face in a scene);
then the detector on the image's visible half completed by its mirror image (a face crop with one side hidden from
the nose outwards; reported as "padded", the detector on a re-framed copy); last, the detector on the image with its
largest flat patch filled in from around it (a face crop whose middle is under a block or a panel; also "padded").
Faces do not nest: a
detector face scored low that a wider face of the padded copy holds is a part of that face, which replaces it (where
none holds it and the fallback verifier does not pass it, the mesh-only or the whole-image face may), and of two
nested detector faces the higher-scored stays (NESTED_*). Every face says which step found it (`Face.detection`; a
face found on a tile is the detector's). The fallback steps can be fooled by a cat or a colour wheel, so they answer
only when a face verifier (a callable: aligned crops → face probability) accepts the crop.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import sys
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from ..errors import AgelensError, ImageError
from .align import align_face, keypoints_from_mesh
from .blazeface import MODELS, BlazeFace, OccludedBlazeFace, occluded_model_path
from .mesh import N_MESH, LandmarkModel, template_keypoints
from .mesh import available as fast_mesh_available
from .native import quiet_native_stderr as _quiet_native_stderr

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


_DRAWING = ("drawing_utils", "drawing_styles")
_TASKS = ("mediapipe.tasks", "mediapipe.tasks.python")  # the Tasks API (audio, text, vision, genai): `import
# mediapipe` imports it, the face graphs never use it


# the process that started mediapipe's face graphs (FaceMesh, FaceDetection): a process forked from it inherits
# their threads' locks but not the threads, and a graph then hangs (an inherited one) or aborts (a new one)
_GRAPH_PID: int | None = None


def _graphs_usable_here() -> None:
    """Raise AgelensError in a process forked after mediapipe's graphs started (before: it hung, or died)."""
    if _GRAPH_PID is not None and os.getpid() != _GRAPH_PID:
        raise AgelensError(
            f"mediapipe's face graphs were started in process {_GRAPH_PID} before it forked this one, and cannot "
            "run in a forked process (they hang or abort): start worker processes with the 'spawn' or 'forkserver' "
            "method (multiprocessing.get_context('spawn').Pool(...)), or let agelens run them "
            "(est.predict_many(files, workers=N), `agelens predict --workers N`)")


def mediapipe_solutions():  # noqa: ANN201 - mediapipe has no stubs
    """`mediapipe.solutions`, imported without its drawing helpers and its Tasks API when nothing has imported
    mediapipe yet.

    `import mediapipe` loads `solutions.drawing_utils`, which imports matplotlib.pyplot: half of the 0.8 s a worker
    process spends on its first FaceMesh fallback, for modules the face graphs never use. It also loads the Tasks API
    (`mediapipe.tasks.python`: audio, text, vision, genai; its audio module imports sounddevice, which looks for
    PortAudio by running the linker): 0.15 s of the remaining 0.29 s, for modules the face graphs never use either.
    They are stubbed during the import, then removed, and load on first use (`solutions.drawing_utils`,
    `mediapipe.tasks` still work)."""
    if "mediapipe" in sys.modules:
        return sys.modules["mediapipe"].solutions
    names = [f"mediapipe.python.solutions.{n}" for n in _DRAWING] + list(_TASKS)
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    try:
        import mediapipe as mp
    finally:
        for name in names:
            del sys.modules[name]
    solutions = sys.modules["mediapipe.python.solutions"]
    for n in _DRAWING:
        solutions.__dict__.pop(n, None)
    mp.__dict__.pop("tasks", None)  # the stub; `mediapipe.tasks` is now `_Mediapipe.tasks`
    mp.__class__ = _Mediapipe

    def lazy(attr: str):  # noqa: ANN202 - PEP 562: the drawing modules load when first asked for
        if attr in _DRAWING:
            return importlib.import_module(f"{solutions.__name__}.{attr}")
        raise AttributeError(f"module {solutions.__name__!r} has no attribute {attr!r}")

    solutions.__getattr__ = lazy
    return mp.solutions


class _Mediapipe(types.ModuleType):
    """The `mediapipe` module as `mediapipe_solutions` leaves it: its `tasks` attribute, which `import mediapipe` binds
    to the Tasks API (`mediapipe.tasks.python`), imports it on first use. A property, so that a later `import
    mediapipe.tasks...`, which binds the package `mediapipe.tasks` there, leaves `mediapipe.tasks` as mediapipe
    binds it."""

    @property
    def tasks(self):  # noqa: ANN202 - mediapipe has no stubs
        return importlib.import_module(_TASKS[-1])

    @tasks.setter
    def tasks(self, value) -> None:  # noqa: ANN001 - the import system binding the subpackage: mediapipe rebinds it
        pass


@dataclass
class Face:
    """A face in image pixel coordinates."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    keypoints: np.ndarray  # (5, 2) from the mesh, or (4, 2) eyes/nose/mouth from the detector
    landmarks: np.ndarray | None = None  # (478, 2) FaceMesh, None when the mesh failed
    detection: str = "detector"  # how it was found: one of DETECTIONS
    mirrored: bool = False  # found on a completed copy (the mirror or the fill step): the people check is stricter
    robust: bool = False  # found by the occlusion-robust detector (`OCCLUDED_STEP`): checked as a fallback step's face
    _crop: dict = field(default_factory=dict, repr=False, compare=False)  # aligned(): the last crop, and its image

    def aligned(self, rgb: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """align_face(rgb, keypoints, size) of the image this face was found in, warped once: the verifier's crop
        is the crop the models read (a second warp cost about 1 ms per face). Asked about another image (the same
        face's box drawn on an occluded copy, say), it warps that image."""
        key = (size, self.keypoints.tobytes())
        held = self._crop.get("image")
        if key not in self._crop or held is None or held() is not rgb:
            self._crop = {key: align_face(rgb, self.keypoints, size), "image": weakref.ref(rgb)}
        return self._crop[key]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_crop": {}}  # the crop memo (and its weak reference) stays in this process


DETECTIONS = ("detector", "padded", "mesh", "whole-image")
N_IRIS = 10  # FaceMesh's iris points (468-477), which only the refined graph has
PAD_FRACTION = 0.5  # border added on every side for the second detector pass, as a share of the long side
# the padded copy's long side at most (the image is shrunk first beyond it): the detector and the mesh see it at a
# few hundred pixels anyway, and mediapipe's mesh graph crashes the process (SIGSEGV) on an image of 2 GB or more,
# which a 20,000 px panorama with its border reaches. Images up to 4,096 px are padded at their own size.
PAD_MAX_SIDE = 8192
# A verifier: aligned face crops (N, S, S, 3) uint8 → face probabilities (N,); `threshold` is its decision point.
Verifier = Callable[[np.ndarray], np.ndarray]
# What a face the detector itself found (step 1) must score: the detector's own evidence counts, so only clear
# non-faces are dropped (a colour wheel scores 0.01, the Hubble deep field 0.07-0.13, while 98.6 % of the faces it
# finds in real masked-face photos score above 0.2; measured with the shipped verifier).
DETECTED_THRESHOLD = 0.2
# FaceMesh on a face's region (`_mesh_in_box`, where the fast landmark model passes the face over) aligns that face
# only where it describes it (`mesh_fits_box`); a mesh of another face becomes a face of its own (`_with_mesh`).
# Before 2026-12-07 only the nose's column was checked: in 162 realocc photos 7 meshes were under half their box
# wide, 5 of them on another face than the box (a neighbour's mesh gave a masked man the neighbour's crop and age; a
# box on a backpack or a body was answered with the face above it).
MESH_BOX_SLACK = 0.25
MESH_MIN_WIDTH = 0.4
# In an image this long or longer the tile step is read before the whole-image step: a scene photo with one small
# face the detector's whole-image passes cannot see (2-5 % of a 2,000-4,000 px photo) was answered as one face, the
# whole photo, where the tiles find the face. Face crops (smaller) keep the whole-image step first.
WHOLE_AFTER_TILES_MIN_SIDE = 640
# And where no step has found a face in an image FINE_MIN_SIDE long or longer, the finest grid (FINE_MAX_GRID per side)
# is read: one person 3 % of a 2,000 or 4,000 px photo wide (a 60-120 px face, someone a few metres away) showed
# under the detector's smallest faces on the 3 x 3 tiles, and 18 of 60 such faces on three backgrounds were missed.
LONE_TILES = True
# One face, two boxes: where the search's steps and the detector's two ranges boxed the same face differently (IoU
# 0.3-0.4, neither box 80 % inside the other), predict answered it twice. In realocc's measure half (971 photos) every
# pair of answered boxes overlapping by 0.3 or more (7 photos) was one person, in three of them with the landmark
# model's eyes 10-26 px apart; pairs at 0.18-0.3 were one person (8) or two people whose heads overlap (2), and the
# most two people's boxes overlapped was 0.2. The faces are compared by their boxes and by where their eyes are
# (`same_face`).
SAME_FACE_IOU = 0.3
SAME_FACE_SHIFT = 0.35
SAME_FACE_SCALE = 1.5
# Where the ImageNet check turned away every face of a photo VETOED_TILES_MIN_SIDE long or longer, and then every face
# the fallback steps found when asked again (a cat's face, found first by the detector and again by the padded step;
# `inference.finding`'s second look), the tile steps had not run: they are read for the faces beside the vetoed ones
# (`FaceAnalyzer.tile_steps`). One face pasted on scikit-image's cat enlarged to 1000-4000 px
# (`benchmarks/lone_face.py`): 124 -> 137 of 144 found, no box without a face; its photos without a face enlarged to
# 1000-4000 px and no_face.py's 851 images: none answered more. (A photo whose first look found only fallback faces,
# all turned away, is not read again: not measured.)
VETOED_TILES = True
VETOED_TILES_MIN_SIDE = 1000
VETOED_SAME = 0.3
# A short-range face this share of the image wide or wider means the full-range pass is skipped. On 300 realocc
# photos it was skipped for 140 and lost one face of a group (none of the largest faces); it halves detection time
# on face crops (short range 4.3 ms, full range 8.8 ms, AMD EPYC).
LARGE_FACE = 0.3
# Faces do not nest. On a face that fills the frame under two occluders (sunglasses and a mask) the detector often
# misses the face and fires on a part of it instead (the nose, one lens, a reflection in it: a box a third to a half
# of the face's width, scored 0.5-0.7), which the face networks pass, since its crop is of skin and features. So
# where a face the detector found scores under NESTED_BELOW, the padded copy is read too, and a face found there
# replaces it when it holds it (NESTED_INSIDE of its box, its centre within NESTED_CENTRED of the wider face's width
# and height from the wider face's centre), is NESTED_WIDER times as wide or more, spans NESTED_FILLS of the image's
# width or more, and the fallback steps' verifier passes it. In scenes the padded copy's wider boxes were heads with
# shoulders around a small real face, off its centre or a small share of the image (realocc photos,
# benchmarks/nested_faces.py).
NESTED_BELOW = 0.7
NESTED_INSIDE = 0.8
NESTED_CENTRED = 0.25
NESTED_WIDER = 1.5
NESTED_FILLS = 0.5
# A wider face the detector scores NESTED_MORE_SURE or more above the face it holds replaces it whatever their widths
# and however far left, right or below its centre the held face lies (above it, NESTED_CENTRED of its height at most:
# a head with shoulders around a real face holds it high). The rest of the rule stands (under NESTED_BELOW,
# NESTED_FILLS of the image, verified). Under scan grain or low resolution the detector fires on the lower half or
# one side of a face that fills a crop (score 0.50-0.61) and finds the whole face on the padded copy (0.79-0.88), 1.4
# times as wide or off-centre by 0.26-0.35: that part was read 16-35 years off. End to end against the rule without
# it (benchmarks/nested_faces.py --degraded 300, docs/nested_more_sure_{val,test}.md): UTKFace scan grain −0.09
# (val) / −0.11 (test), everything else within ±0.015 but clean test −0.045; at 0.15, grain −0.13 / −0.16 but
# 17 % of clean validation answers moved, low resolution +0.04 and paper types +0.02 on test, 4-6 % more time.
# Its cost: +4.9 % predict time on UTKFace crops (benchmarks/ab_predict.py), none on photos.
NESTED_MORE_SURE = 0.25
# Where no face of the padded copy holds an unsure detector face, the fallback steps' faces may: the mesh alone, else,
# for an image shaped like a face crop, the whole image (each verified as those steps verify it). One replaces the
# unsure faces that lie inside it, are at most 1 / NESTED_FALLBACK_WIDER of its width (the whole image's:
# 1 / NESTED_WHOLE_WIDER) and that the fallback verifier does not pass as faces on their own, when no other face found
# lies inside it. Under sunglasses and a mask, or blocks over the eyes and the mouth, the detector fires on a lens, a
# cheek or a corner of a face that fills the photo (a box a tenth to two fifths of its width, scored 0.5-0.65) and
# the padded copy finds nothing wider: that fragment, aligned as a face and read by the student, was 10-60 years off
# (docs/occlusion_report.md, "A fragment no padded face holds"). The safeguards keep real faces: a masked face a third
# of a photo's width passes the fallback verifier (the whole photo of a woman in a sweater had replaced it), and a real
# face beside a small false detection lies inside the whole image too. 0 turns the step off.
NESTED_FALLBACK_WIDER = 2.0
NESTED_WHOLE_WIDER = 2.5
# The same person found twice: on real masked photos the detector often returns a tight box on the face and a loose
# one around the head (both verified; 63 of 1,832 answered realocc photos had a face inside another, every one looked
# at the same person's). Where a verified detector face lies NESTED_INSIDE inside another, only the one the detector
# scored higher stays (predict's search only; `_merge` keeps both, their IoU being small).
NESTED_DUPLICATES = True
# The tile step: grids tried in turn, the tiles' overlap (share of a tile), and the largest face it may return as a
# share of the image's width and height (a larger face is the image's own, which the steps before it judged). On the
# measured half of realocc's mask photos (first 300 per source) it answered 30 of the 45 photos the cascade left
# unanswered (faces 8-47 px wide in 256-400 px scene photos) and none of 92 non-face images, with the predictor's
# tile verifier (both face networks); with the separate face network alone 33, and a coin and the rocket.
TILE_GRIDS = (2, 3)
TILE_OVERLAP = 0.25
TILE_MAX_FACE = 0.25
# More faces: where the detector step found faces but the smallest is under MORE_FACES_BELOW of the image's long side
# (a group or scene photo, its faces near the size the whole-image pass can see), the 2 × 2 tiles are read too and
# their faces that overlap none found are added (tile-verified). Without it a group photo lost the people a little
# smaller than the one it found: 8 faces of 130 px in a 1600 px photo, 1 of 8 found, where the tiles alone found 8.
# On 300 realocc photos (measure half) it ran on 69 and added 40 faces in 25 of them (at 0.15: 92, 42 in 27), every
# earlier answer unchanged; of the 42 looked at, 40 were real (masked) faces, 2 a hand. Time on 150 such photos:
# 13.9 against 10.4 s (`benchmarks/ab_predict.py`), the pass itself 1.8 s, the rest answering the faces it adds.
# In an image BESIDE_LARGE_MIN_SIDE px long or longer (a phone or camera photo, a web picture) the tiles are read too
# while the smallest face found is under MORE_FACES_LARGE_BELOW of the long side, cut from a halved copy (cheap on a
# 12 MP photo): before, a face under a tenth of the image beside a larger one (a child by an adult close to the
# camera) was lost (benchmarks/small_beside_large.py, docs/small_beside_large.md: a UTKFace face 0.05 of the long side
# beside one about 0.43 wide on a 1000 px photo, 0 of 30 found, now 29; realocc photos enlarged 2.5 times, 9 more
# faces in 150 photos, all real, every earlier answer the same; with the full-range model alone on the tiles, 6).
# Face crops and realocc's own photos (400 px at most) are smaller than the size and read as before.
# The size was 480 px until 2026-12-06: the faces this reading adds are 0.03-0.08 of the long side (the whole-image
# pass finds larger ones), a twentieth of it under 32 px in an image under 640 (where the 90 % intervals stop
# holding, docs/small_face_intervals_test.json), while its detector passes (up to eight) cost every portrait 2.5 times the time:
# 300 All-Age-Faces test photos as 480 px scanned prints (`benchmarks/inference.py --portraits`), 32.8 against 13.3
# ms per photo, one face more (a drawing on the wall). Composites at 640 and 1000 px find the small face as before.
MORE_FACES_BELOW = 0.1
MORE_FACES_GRID = 2
MORE_FACES_MIN_SIDE = 480
MORE_FACES_LARGE_BELOW = 0.6
BESIDE_LARGE_MIN_SIDE = 640
# Finer tiles for a crowd in a large photo: in an image FINE_MIN_SIDE px long or longer, where the smallest face found
# (the 2 x 2 tiles' included) would show under FINE_FACE_PX px wide on a tile of the grid read so far at the
# full-range model's input, a grid of tiles that shows it at that size is read too (at most FINE_MAX_GRID per side,
# tiles no smaller than the model's input), and its faces that overlap none found are added (tile-verified); also
# after the tile step. On composites of 20-48 UTKFace test faces on 2000-4000 px photos (`benchmarks/crowd.py`,
# docs/crowd.md) 101 of 702 faces were found before, 572 now, boxes holding no face 6 -> 9, 0.2-0.6 s more per such
# photo; enlarged realocc scenes: 10 more real masked faces in 150 photos, no earlier answer changed; phone photos
# of one person as before. The grid is sized from a face found, so a crowd none of whose faces any step
# finds is still missed, and a photo without a face costs what it did.
FINE_MIN_SIDE = 1000
FINE_FACE_PX = 28
FINE_MAX_GRID = 6
FINE_LARGEST = 2.0  # the widest face the finer grid may add, times the smallest face found
# The same more-faces pass after the padded step, in images MORE_FACES_MIN_SIDE long or longer: where only the padded
# copy showed faces, the search stopped at them (a mirrored class photo gave 3 of 25).
MORE_FACES_AFTER_PADDED = True
# The mirror step, for a face crop with one half hidden (a hand, a panel, hair over one side from the nose outwards,
# which the detector and the mesh miss): the visible half of the image left or right of each of these columns (as a
# share of the width) completed by its own mirror image, so the detector sees a whole face; a face found there is
# checked on that completed crop and aligned on the image itself from its (mirrored) landmarks. 0.425 and 0.575 since
# 2026-12-06: the nose midline of a face crop lies between the old columns as often as on them (left halves of
# validation crops at 0.41-0.44, right halves at 0.53-0.58); foreign_occluders --part val --seed 11 left / right half
# 96.8 / 97.2 → 97.6 / 98.0 % answered, test 98.0 / 97.6 → 98.4 / 98.4 %, no face lost, no image without a face
# added (1,702); an image without a face that reaches the step costs about 13 % more (203 → 229 ms on 60 crops).
MIRROR_AXES = (0.5, 0.45, 0.55, 0.425, 0.575, 0.4, 0.6)
# a face found on a completed copy must sit on its mirror axis (box centre within MIRROR_CENTRED of the box's width),
# span MIRROR_MIN_WIDTH of the image's width or more (the step is for face crops: on 476 non-face images that reached
# it, scikit-image's sample photos and seeded crops, the small "faces" were rocket and grass textures and a cat) and
# be verified at MIRROR_SURE or more (or the verifier's own threshold if higher): at 0.93 these two rules kept all 66
# half faces of 91 validation photos it answered and cut the non-face images answered from 14 to 4 (three moon crops,
# the coffee cup; runs/ probe of 2026-12-03, before the measured no-face seeds); 0.95, because scikit-image's whole
# coffee photo scores 0.935 and was the one non-face image every no-face run still answered, costs one of 300
# validation half faces (foreign_occluders --part val --seed 11: left half 97.7 → 97.3 %, right half and random
# block unchanged)
MIRROR_CENTRED = 0.15
MIRROR_MIN_WIDTH = 0.3
MIRROR_SURE = 0.95
# nor is it asked about grey images (mean |R − G| + |G − B| under this, in levels): mirrored, the craters of grey moon
# crops became faces that every network and the ImageNet people check passed (4 of 36 moon views of no-face seeds
# 13-15, 2 of 36 of seeds 7-9), while 2.6 % of UTKFace photos are grey, so the step gives up few half faces
MIRROR_MIN_CHROMA = 2.0
# and it reads the image shrunk to this long side at most (a face it looks for spans 0.3 of the width; the detector
# reads 128 px): on a 4,000 × 3,000 photo without a face its ten completed copies and their borders cost 3.3 s at
# full size. Every image measured (face crops, scikit-image photos) is smaller, so none is read differently.
MIRROR_MAX_SIDE = 1024


# The fill step (`FaceAnalyzer._filled`): a face crop whose middle is under one flat-coloured patch (a censor block, a
# panel, a sticker) defeats the detector, but with the patch filled in from its surroundings (OpenCV's inpainting) it
# reads as a face again. Asked last, for crop-shaped images the other steps left without a face, where the largest
# flat region (local standard deviation under FILL_FLAT_SD in a 5 x 5 window) covers FILL_SHARE of the image; the face
# must be verified on the filled copy at FILL_SURE or more, and the people veto is asked about it as about a mirrored
# face.
FILL_STEP = True
FILL_FLAT_SD = 3.0
FILL_SHARE = (0.12, 0.6)
FILL_SURE = 0.95
FILL_MAX_SIDE = 512
# The filled copy is read by the detector, its padded copy, then the occlusion-robust detector (`OCCLUDED_STEP`) on
# both, in turn, until one gives a face the verifier passes (the inpainted smear is what the plain detector misses;
# a face neither mesh reads counts from the robust copy, on its keypoints). Measured 2026-12-07 against the step
# before (the detector's faces, or the padded copy's only where it found none): foreign_occluders test random block
# 97.2 -> 98.8 % answered, validation one left half more, embedded test 708 -> 715 of 900, paper types 99.9 -> 100 %;
# no face lost or changed, the no-face seeds 7-9 / 13-15 the same 20 / 24 images.
FILL_ROBUST = True
# The mirror and fill steps read each candidate's landmarks from both meshes where predict's fast path applies
# (`_both_meshes`): the plain landmark model's and the FaceMesh graph's differ on a completed or filled face, and each
# gives some of them the crop the verifier passes. The steps run only for crop-shaped images every other step left
# without a face. Measured 2026-12-06 (foreign_occluders --part val --seed 11, four kinds): with the fast path's points
# alone (before) left / right half 96.0 / 96.8 % answered; with the graph's alone 95.6 / 96.8 % (3 faces gained, 4
# lost); with both 96.8 / 97.2 % (3 gained, none lost); random block and top half unchanged; no image without a face
# newly answered (1,702).
BOTH_MESHES = True

# The occlusion-robust detector step (2026-12-07): where the detector found no face on the image or its padded copy,
# the short-range detector's copy distilled to see occluded faces (`faces.blazeface.OccludedBlazeFace`,
# `train.face_detector`) reads the image, then the padded copy, and (after the tile step) the 2 x 2 tiles. Its faces
# must pass both face networks (as a tile's) at OCCLUDED_SURE, as the mirror step's do: at the networks' own bar it
# answered two of 92 moon crops and a cup of coffee (scikit-image's, at 0.914; its 132 faces on validation scene
# photos scored 0.93 or more, 130 of them 0.95 or more). They go through the ImageNet checks as a fallback step's face
# (`Face.robust`). Skipped where its weights are missing.
OCCLUDED_STEP = True
OCCLUDED_SURE = 0.95
OCCLUDED_TILE_GRIDS = (2,)  # on tiles, faces up to OCCLUDED_TILE_MAX_FACE of the image (a face in a scene)
OCCLUDED_TILE_MAX_FACE = 0.6
OCCLUDED = 2  # `_raw_detections`' model number for it (0 and 1: mediapipe's short and full range)


@functools.cache
def occluded_available() -> bool:
    """Whether the occlusion-robust detector's weights ship in this install (and onnxruntime can run them)."""
    import importlib.util

    return os.path.isfile(occluded_model_path()) and importlib.util.find_spec("onnxruntime") is not None


def flat_region(rgb: np.ndarray, sd: float = FILL_FLAT_SD) -> np.ndarray:
    """uint8 mask (255 = in) of the largest 8-connected region of flat pixels (local standard deviation under `sd`
    in every channel, 5 x 5 window), grown by 2 px."""
    g = rgb.astype(np.float32)
    mu, sq = cv2.blur(g, (5, 5)), cv2.blur(g * g, (5, 5))
    flat = (np.sqrt(np.maximum(sq - mu * mu, 0)).max(2) < sd).astype(np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(flat, 8)
    if n <= 1:
        return np.zeros(rgb.shape[:2], np.uint8)
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return cv2.dilate((lab == i).astype(np.uint8) * 255, np.ones((5, 5), np.uint8))


def flat_image(rgb: np.ndarray, sd: float = 4.0) -> bool:
    """Whether the image is one flat colour (grey-level spread under `sd`), judged on at most about a million of its
    pixels: the spread of a whole 60 MP image took 1.4 GB of float64 and seconds."""
    step = max(1, int((rgb.shape[0] * rgb.shape[1] / 1e6) ** 0.5))
    return float(rgb[::step, ::step].std()) < sd


def fine_grid(side: int, face_px: float) -> int:
    """The tiles per side at which a face face_px wide in an image `side` px long shows FINE_FACE_PX wide at the
    full-range model's input (FINE_MAX_GRID at most, tiles no smaller than that input); 0 under FINE_MIN_SIDE."""
    if side < FINE_MIN_SIDE:
        return 0
    tile = MODELS[1].size * max(1.0, face_px / FINE_FACE_PX)
    return min(FINE_MAX_GRID, math.ceil((side / tile - TILE_OVERLAP) / (1 - TILE_OVERLAP)))


def shrunk(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """(the image shrunk, anti-aliased, to a long side of at most max_side, its scale k; 1.0: the image as it is)."""
    h, w = rgb.shape[:2]
    k = min(1.0, max_side / max(h, w))
    if k == 1.0:
        return rgb, k
    return cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA), k


def box_back(box: tuple[float, ...], k: float, shape: tuple[int, ...], dx: float = 0.0) -> tuple[float, ...]:
    """A box on a `shrunk` copy (shifted by dx px there) in the image's pixels, clipped to its (h, w) `shape`."""
    h, w = shape[:2]
    return (max(0.0, (box[0] + dx) / k), max(0.0, box[1] / k), min(float(w), (box[2] + dx) / k),
            min(float(h), box[3] / k))


def chroma(rgb: np.ndarray) -> float:
    """Mean |R − G| + |G − B| over (a grid of at most about 256 × 256 of) the image's pixels: 0 for a grey image."""
    step = max(1, max(rgb.shape[:2]) // 256)
    x = rgb[::step, ::step].astype(np.int16)
    return float(np.abs(x[..., 0] - x[..., 1]).mean() + np.abs(x[..., 1] - x[..., 2]).mean())


def mirror_completed(rgb: np.ndarray, axis: int, side: str) -> tuple[np.ndarray, int]:
    """The image's half left (side="left") or right of column `axis` followed or preceded by its mirror image; returns
    (completed image, x offset): a point (x, y) of the completed image is (x + offset, y) on `rgb`."""
    if side == "left":
        half = rgb[:, :axis]
        return np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], 1)), 0
    half = rgb[:, axis:]
    return np.ascontiguousarray(np.concatenate([half[:, ::-1], half], 1)), 2 * axis - rgb.shape[1]


def pad_border(rgb: np.ndarray, fraction: float = PAD_FRACTION) -> tuple[np.ndarray, int]:
    """The image inside a constant mid-grey border of fraction × its long side; returns (image, border px)."""
    p = int(round(fraction * max(rgb.shape[:2])))
    return cv2.copyMakeBorder(rgb, p, p, p, p, cv2.BORDER_CONSTANT, value=(127, 127, 127)), p


def pad_border_capped(rgb: np.ndarray, max_side: int | None = None) -> tuple[np.ndarray, int, float]:
    """`pad_border` of the image shrunk (anti-aliased) so that the padded copy's long side is at most `max_side`
    (default PAD_MAX_SIDE): (padded, border px, scale); a point (x, y) of the padded copy is ((x − border) / scale,
    (y − border) / scale) in the image."""
    h, w = rgb.shape[:2]
    scale = min(1.0, (max_side or PAD_MAX_SIDE) / ((1 + 2 * PAD_FRACTION) * max(h, w)))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    padded, p = pad_border(rgb)
    return padded, p, scale


def whole_image_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """The whole image as a face crop: centred on a square (edges replicated, aspect kept), resized to size."""
    h, w = rgb.shape[:2]
    d = abs(h - w)
    if d:
        a, b = d // 2, d - d // 2
        rgb = cv2.copyMakeBorder(rgb, *((a, b, 0, 0) if w > h else (0, 0, a, b)), cv2.BORDER_REPLICATE)
    side = rgb.shape[0]
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def inside(b: tuple[float, ...], a: tuple[float, ...]) -> bool:
    """Whether box b lies NESTED_INSIDE (its area's share) inside box a; boxes are (x1, y1, x2, y2)."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter >= NESTED_INSIDE * (b[2] - b[0]) * (b[3] - b[1])


def _best_first(faces: list[Face], clash: Callable[[Face, Face], bool]) -> list[Face]:
    """Faces by descending score, each dropped where it clashes with a face already kept (greedy suppression)."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: -f.score):
        if not any(clash(f, k) for k in kept):
            kept.append(f)
    return kept


def without_nested(faces: list[Face]) -> list[Face]:
    """Faces by descending score, each dropped where it lies NESTED_INSIDE inside a kept one's box or a kept one lies
    that far inside its own (one person found twice)."""
    return _best_first(faces, lambda f, k: inside(f.box, k.box) or inside(k.box, f.box))


def same_face(a: Face, b: Face) -> bool:
    """Whether two faces are one: boxes within SAME_FACE_SCALE of each other's width overlapping by SAME_FACE_IOU or
    more; or their eyes' midpoints (the first two keypoints, from the mesh or the detector) within SAME_FACE_SHIFT
    of the wider eye distance, the eye distances within SAME_FACE_SCALE of each other."""
    wa, wb = a.box[2] - a.box[0], b.box[2] - b.box[0]
    if min(wa, wb) > 0 and max(wa, wb) <= SAME_FACE_SCALE * min(wa, wb) and iou(a.box, b.box) >= SAME_FACE_IOU:
        return True
    ka, kb = a.keypoints[:2], b.keypoints[:2]
    if len(ka) < 2 or len(kb) < 2 or not (np.isfinite(ka).all() and np.isfinite(kb).all()):
        return False
    da, db = float(np.linalg.norm(ka[0] - ka[1])), float(np.linalg.norm(kb[0] - kb[1]))
    if min(da, db) <= 0 or max(da, db) > SAME_FACE_SCALE * min(da, db):
        return False
    return float(np.linalg.norm(ka.mean(0) - kb.mean(0))) <= SAME_FACE_SHIFT * max(da, db)


def without_same_face(faces: list[Face]) -> list[Face]:
    """Each face once (`same_face`): of two boxes on one face, the one with the mesh's landmarks stays, else the one
    scored higher; the order of the faces kept is unchanged."""
    if len(faces) < 2:
        return faces
    rank = sorted(range(len(faces)), key=lambda i: (faces[i].landmarks is None, -faces[i].score))
    kept: list[int] = []
    for i in rank:
        if not any(same_face(faces[i], faces[k]) for k in kept):
            kept.append(i)
    return [faces[i] for i in sorted(kept)]


def _fragments(faces: list[Face], unsure: list[Face], box: tuple[float, ...], wider: float) -> list[Face]:
    """The `unsure` faces that lie NESTED_INSIDE inside `box` and are at most 1 / wider of its width; none where
    another of `faces` lies inside it (a real face there: the box is not the face they are parts of)."""
    held = [f for f in faces if inside(f.box, box)]
    parts = [f for f in held if any(f is u for u in unsure) and wider * (f.box[2] - f.box[0]) <= box[2] - box[0]]
    return parts if len(parts) == len(held) else []


def mesh_fits_box(lm: np.ndarray, box: tuple[float, ...]) -> bool:
    """Whether FaceMesh's landmarks, found in a region twice the box, describe the box's face: its nose tip within
    MESH_BOX_SLACK of the box (both ways) and its 468 points MESH_MIN_WIDTH of the box wide or wider. The graph runs
    its own detector on the region and answers the most face-like face there: a neighbour's, or the face above a box
    on something else (a backpack, a body)."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    nose = lm[1]
    if not (box[0] - MESH_BOX_SLACK * bw <= nose[0] <= box[2] + MESH_BOX_SLACK * bw
            and box[1] - MESH_BOX_SLACK * bh <= nose[1] <= box[3] + MESH_BOX_SLACK * bh):
        return False
    xs = lm[:N_MESH, 0]
    return float(np.nanmax(xs) - np.nanmin(xs)) >= MESH_MIN_WIDTH * bw


def mesh_box(lm: np.ndarray, shape: tuple[int, ...]) -> tuple[float, ...] | None:
    """The extent of FaceMesh's landmarks, clipped to the image; None where under 4 px a side."""
    h, w = shape[:2]
    x1, y1 = np.nanmin(lm[:N_MESH], 0)
    x2, y2 = np.nanmax(lm[:N_MESH], 0)
    box = (max(0.0, float(x1)), max(0.0, float(y1)), min(float(w), float(x2)), min(float(h), float(y2)))
    return None if box[2] - box[0] < 4 or box[3] - box[1] < 4 else box


def crop_shaped(rgb: np.ndarray) -> bool:
    """Whether the image could be one face crop: neither side more than twice the other (a strip or a panorama is
    none)."""
    h, w = rgb.shape[:2]
    return 0.5 <= w / h <= 2.0


def _merge(cands: list[Face], overlap: float = 0.4) -> list[Face]:
    """Faces by descending score, each dropped where it overlaps a kept one by `overlap` (IoU) or more."""
    return _best_first(cands, lambda f, k: iou(f.box, k.box) >= overlap)


def _unpadded(faces: list[Face], p: int, scale: float, shape: tuple[int, ...]) -> list[Face]:
    """Faces found on `pad_border_capped`'s copy (border p, scale) in the image's pixels, detection "padded"; boxes
    clipped to the image, slivers under 4 px dropped."""
    h, w = shape[:2]
    out = []
    for f in faces:
        x1, y1, x2, y2 = ((v - p) / scale for v in f.box)
        f.box = (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
        f.keypoints, f.detection = (f.keypoints - p) / scale, "padded"
        if f.box[2] - f.box[0] >= 4 and f.box[3] - f.box[1] >= 4:
            out.append(f)
    return out


class FaceAnalyzer:
    """Wraps mediapipe; one instance per process (mediapipe graphs are not thread-safe).

    fast=True (None: when LiteRT is installed; the predictor's choice) runs mediapipe's models through LiteRT:
    the same BlazeFace detectors with their post-processing in numpy (`faces.blazeface`), and for a face the
    detector found the plain 468-point landmark model on the detector's region (`faces.mesh`, about 3 ms) instead
    of the FaceMesh graph with iris refinement (about 10 ms), so its iris points (468-477) are NaN. Faces that model
    rejects, and the mesh-only fallback, still use FaceMesh. The default (False) keeps mediapipe's graphs
    everywhere: dataset preparation and occluder placement need the iris points, and it is the alignment the models
    were trained on, which the fast path's template reproduces."""

    def __init__(self, min_confidence: float = 0.5, mesh_confidence: float = 0.3,
                 fast: bool | None = False) -> None:
        self.min_confidence = min_confidence
        self.mesh_confidence = mesh_confidence
        self.fast = fast_mesh_available() if fast is None else fast
        self._fast: LandmarkModel | None = None
        self._mesh = None
        self._mesh_quiet = True
        self._det: dict[int, object] = {}

    def _mp(self):  # noqa: ANN202 - mediapipe has no stubs
        _graphs_usable_here()
        global _GRAPH_PID
        _GRAPH_PID = os.getpid()
        return mediapipe_solutions()

    def mesh(self, rgb: np.ndarray) -> np.ndarray | None:
        """478 landmarks (x, y) in pixels for the most prominent face, or None."""
        if self._mesh is None:
            with _quiet_native_stderr():
                self._mesh = self._mp().face_mesh.FaceMesh(
                    static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                    min_detection_confidence=self.mesh_confidence)
        _graphs_usable_here()
        try:
            if self._mesh_quiet:  # the mesh graph logs a projection warning on its first face, once
                with _quiet_native_stderr():
                    res = self._mesh.process(np.ascontiguousarray(rgb))
                self._mesh_quiet = not res.multi_face_landmarks
            else:
                res = self._mesh.process(np.ascontiguousarray(rgb))
        except RuntimeError as e:  # a failed run leaves mediapipe's graph unusable: the next call builds a new one
            with contextlib.suppress(RuntimeError, ValueError):  # closing a failed graph reports the failure again
                self._mesh.close()
            self._mesh = None
            raise ImageError(f"the face landmark graph failed on a {rgb.shape[1]}x{rgb.shape[0]} image: "
                             f"{str(e).splitlines()[0] if str(e) else 'RuntimeError'}") from e
        if not res.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        return np.array([[p.x * w, p.y * h] for p in res.multi_face_landmarks[0].landmark], np.float32)

    def _raw_detections(self, rgb: np.ndarray, model: int) -> list[tuple[tuple[float, ...], float, np.ndarray]]:
        """(box x1, y1, x2, y2, score, (4, 2) keypoints: eyes, nose, mouth) in pixels, from BlazeFace through LiteRT
        (fast) or mediapipe's FaceDetection graph; model OCCLUDED: the occlusion-robust copy (ONNX), either way."""
        if self.fast or model == OCCLUDED:
            if model not in self._det:
                self._det[model] = (OccludedBlazeFace(self.min_confidence) if model == OCCLUDED
                                    else BlazeFace(model, self.min_confidence))
            return [(box, score, kp[:4]) for box, score, kp in self._det[model](rgb)]
        if model not in self._det:
            with _quiet_native_stderr():
                self._det[model] = self._mp().face_detection.FaceDetection(
                    model_selection=model, min_detection_confidence=self.min_confidence)
                self._det[model].process(np.zeros((64, 64, 3), np.uint8))
        _graphs_usable_here()
        res = self._det[model].process(np.ascontiguousarray(rgb))
        h, w = rgb.shape[:2]
        out = []
        for d in res.detections or []:
            bb = d.location_data.relative_bounding_box
            box = (bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h)
            kp = np.array([[k.x * w, k.y * h] for k in d.location_data.relative_keypoints[:4]], np.float32)
            out.append((box, float(d.score[0]), kp))
        return out

    def _detect(self, rgb: np.ndarray, model: int) -> list[Face]:
        """The detector's faces, boxes clipped to the image; slivers under 4 px dropped (`Face.robust` for the
        occlusion-robust copy's)."""
        h, w = rgb.shape[:2]
        faces = []
        for b, score, kp in self._raw_detections(rgb, model):
            box = (max(0.0, float(b[0])), max(0.0, float(b[1])), min(float(w), float(b[2])), min(float(h), float(b[3])))
            if box[2] - box[0] >= 4 and box[3] - box[1] >= 4:
                faces.append(Face(box, score, kp, robust=model == OCCLUDED))
        return faces

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces from the short-range detector, plus the full-range one unless the short range already found a face
        at least LARGE_FACE of the image wide (a portrait or a face crop, where the full range adds nothing but
        time); merged by IoU (largest score wins)."""
        cands = self._detect(rgb, 0)
        if not any(f.box[2] - f.box[0] >= LARGE_FACE * rgb.shape[1] for f in cands):
            cands += self._detect(rgb, 1)
        return _merge(cands)

    def detect_tiled(self, rgb: np.ndarray, n: int, overlap: float = TILE_OVERLAP,
                     max_face: float = TILE_MAX_FACE, halved: bool = False, model: int | None = None) -> list[Face]:
        """`detect` on each of n × n overlapping tiles (each scaled to the detector's input, so a face of a few pixels
        becomes one it can see), in image pixels, merged by IoU; faces wider than max_face of the image's width or
        taller than max_face of its height are dropped. halved: the tiles of a large image are cut from a copy
        halved (exact 2 x 2 averages, cheap) while a tile is over twice the full-range model's input: one area
        resize of a 12 MP photo's tile to the model's input cost more than the model. model: one detector model
        (`_detect`'s number, e.g. OCCLUDED) on each tile instead of `detect`'s two ranges."""
        h, w = rgb.shape[:2]
        tw, th = w / (n - (n - 1) * overlap), h / (n - (n - 1) * overlap)
        if halved and max(tw, th) > 2 * MODELS[1].size:
            half = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
            sx, sy = w / half.shape[1], h / half.shape[0]
            found = self.detect_tiled(half, n, overlap, max_face, halved, model)
            for f in found:
                f.box = (f.box[0] * sx, f.box[1] * sy, min(float(w), f.box[2] * sx), min(float(h), f.box[3] * sy))
                f.keypoints = f.keypoints * np.array([sx, sy], np.float32)
            return found
        cands = []
        for i in range(n):
            for j in range(n):
                x0, y0 = int(round(j * tw * (1 - overlap))), int(round(i * th * (1 - overlap)))
                x1, y1 = min(w, int(round(x0 + tw))), min(h, int(round(y0 + th)))
                if x1 - x0 < 8 or y1 - y0 < 8:
                    continue
                tile = rgb[y0:y1, x0:x1]
                for f in self.detect(tile) if model is None else self._detect(tile, model):
                    f.box = (f.box[0] + x0, f.box[1] + y0, f.box[2] + x0, f.box[3] + y0)
                    if f.box[2] - f.box[0] <= max_face * w and f.box[3] - f.box[1] <= max_face * h:
                        f.keypoints = f.keypoints + np.array([x0, y0], np.float32)
                        cands.append(f)
        return _merge(cands)

    def _padded_faces(self, rgb: np.ndarray) -> tuple[list[Face], np.ndarray, int, float]:
        """The detector on the image inside a border (`pad_border_capped`): its faces in the image's pixels
        (detection "padded", no landmarks yet), and the padded copy, its border and scale."""
        padded, p, scale = pad_border_capped(rgb)
        return _unpadded(self.detect(padded), p, scale, rgb.shape), padded, p, scale

    @staticmethod
    def _robust_check(verifier: Verifier, threshold: float, tile_verifier: tuple[Verifier, float] | None
                      ) -> tuple[Verifier, float]:
        """How the robust detector's faces are verified: as a tile's (both face networks where the caller gives
        them), at OCCLUDED_SURE at least."""
        rv, rt = tile_verifier or (verifier, threshold)
        return rv, max(rt, OCCLUDED_SURE)

    def _robust_faces(self, rgb: np.ndarray, padded: np.ndarray, p: int, scale: float) -> list[Face]:
        """The occlusion-robust detector (`OCCLUDED_STEP`) on the image (detection "detector") or, where it finds
        nothing there, on the padded copy ("padded"); no landmarks yet."""
        return self._detect(rgb, OCCLUDED) or _unpadded(self._detect(padded, OCCLUDED), p, scale, rgb.shape)

    def _unnested(self, rgb: np.ndarray, faces: list[Face], verifier: Verifier, threshold: float,
                  crop_size: int, whole_verifier: tuple[Verifier, float] | None = None) -> list[Face]:
        """`faces` (the detector step's) with each one scored under NESTED_BELOW replaced by a verified face of the
        padded copy that holds it and is NESTED_FILLS of the image wide or more, and either is around its centre and
        NESTED_WIDER times as wide, or scores NESTED_MORE_SURE more and does not hold it high: the detector fired on a
        part of a face it did not see whole. Where none does, the mesh-only or the whole-image face replaces the unsure
        faces it holds as fragments (NESTED_FALLBACK_WIDER, NESTED_WHOLE_WIDER; whole_verifier: the whole-image
        step's)."""
        unsure = [f for f in faces if f.score < NESTED_BELOW]
        if not unsure:
            return faces

        def holds(big: Face, small: Face) -> bool:
            a, b = big.box, small.box
            bw, bh = a[2] - a[0], a[3] - a[1]
            if not (inside(b, a) and bw >= NESTED_FILLS * rgb.shape[1]):
                return False
            below = (b[1] + b[3] - a[1] - a[3]) / 2  # how far the small face's centre lies below the wider one's
            if big.score >= small.score + NESTED_MORE_SURE and below >= -NESTED_CENTRED * bh:
                return True
            return (bw >= NESTED_WIDER * (b[2] - b[0]) and abs((b[0] + b[2] - a[0] - a[2]) / 2) <= NESTED_CENTRED * bw
                    and abs(below) <= NESTED_CENTRED * bh)

        padded_faces, padded, p, scale = self._padded_faces(rgb)
        holding = [g for g in padded_faces if any(holds(g, f) for f in unsure)]
        wider = self._verified(rgb, self._with_mesh(rgb, holding), verifier, threshold, crop_size) if holding else []
        kept = [f for f in faces if not any(holds(g, f) for g in wider if f.score < NESTED_BELOW)]
        # a fragment of a face inside the image is at most 1 / NESTED_FALLBACK_WIDER of the image's width (most unsure
        # faces fill a crop: nothing more runs for them), and the fallback verifier does not vouch for it as a face
        small = [f for f in kept if f.score < NESTED_BELOW
                 and NESTED_FALLBACK_WIDER * (f.box[2] - f.box[0]) <= rgb.shape[1]] if NESTED_FALLBACK_WIDER > 0 else []
        if small:
            vouched = verifier(np.stack([f.aligned(rgb, crop_size)[0] for f in small]))
            small = [f for f, v in zip(small, vouched, strict=True) if v < threshold]
        outer = None
        if small:
            outer = self._outer_face(rgb, kept + wider, small, padded, p, scale, verifier, threshold, crop_size,
                                     whole_verifier)
            if outer is not None:
                face, parts = outer
                kept = [f for f in kept if not any(f is g for g in parts)] + [face]
        if not holding and outer is None:
            return faces
        return _merge(kept + wider)

    def _outer_face(self, rgb: np.ndarray, faces: list[Face], unsure: list[Face], padded: np.ndarray, p: int,
                    scale: float, verifier: Verifier, threshold: float, crop_size: int,
                    whole_verifier: tuple[Verifier, float] | None) -> tuple[Face, list[Face]] | None:
        """(face, the `unsure` faces that are its fragments (`_fragments` of `faces`)) for the mesh-only face, else
        (an image shaped like a face crop) the whole image, verified as the fallback steps verify them; None where
        neither has fragments and passes."""
        face = self._mesh_face(rgb, padded, p, scale)
        parts = _fragments(faces, unsure, face.box, NESTED_FALLBACK_WIDER) if face is not None else []
        if parts and self._vouched(face, rgb, verifier, threshold, crop_size) is not None:
            return face, parts
        h, w = rgb.shape[:2]
        parts = (_fragments(faces, unsure, (0.0, 0.0, float(w), float(h)), NESTED_WHOLE_WIDER)
                 if crop_shaped(rgb) and NESTED_WHOLE_WIDER > 0 else [])
        whole = self._whole(rgb, crop_size, whole_verifier or (verifier, threshold)) if parts else None
        return (whole, parts) if whole is not None else None

    @staticmethod
    def _vouched(face: Face, rgb: np.ndarray, verifier: Verifier, threshold: float, crop_size: int) -> Face | None:
        """`face`, its score now the verifier's for its aligned crop, where that is `threshold` or more; else None."""
        score = float(verifier(face.aligned(rgb, crop_size)[0][None])[0])
        if score < threshold:
            return None
        face.score = score
        return face

    @staticmethod
    def _whole(rgb: np.ndarray, crop_size: int, check: tuple[Verifier, float]) -> Face | None:
        """The whole image as one face (detection "whole-image", no keypoints: its crop is `whole_image_crop`),
        scored by check = (verifier, threshold), where that passes it; else None."""
        verifier, need = check
        score = float(verifier(whole_image_crop(rgb, crop_size)[None])[0])
        if score < need:
            return None
        h, w = rgb.shape[:2]
        return Face((0.0, 0.0, float(w), float(h)), score, np.full((4, 2), np.nan, np.float32), None, "whole-image")

    def _mesh_in_box(self, rgb: np.ndarray, box: tuple[float, ...]) -> np.ndarray | None:
        h, w = rgb.shape[:2]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = 2.0 * max(box[2] - box[0], box[3] - box[1])
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        s = int(round(side))
        pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
        img = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT) if pad else rgb
        crop = img[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s]
        scale = 1.0
        if s > 512:  # the mesh runs at 192 px internally; keep the crop small
            scale = 512 / s
            crop = cv2.resize(crop, (512, 512), interpolation=cv2.INTER_AREA)
        lm = self.mesh(crop)
        if lm is None:
            return None
        return lm / scale + np.array([x0, y0], np.float32)

    def _fast_mesh(self, rgb: np.ndarray, f: Face) -> np.ndarray | None:
        """(478, 2) landmarks from the fast path (iris points NaN), or None where it does not apply or says there
        is no face."""
        if not self.fast or len(f.keypoints) != 4 or not np.isfinite(f.keypoints[:2]).all():
            return None
        if self._fast is None:
            self._fast = LandmarkModel()
        lm, _ = self._fast(rgb, f.box, f.keypoints[:2])
        if lm is None:
            return None
        return np.vstack([lm, np.full((N_IRIS, 2), np.nan, np.float32)])

    def _with_mesh(self, rgb: np.ndarray, faces: list[Face], graph: bool = False, others: bool = True
                   ) -> list[Face]:
        """`faces` with landmarks where a mesh finds them: the fast path's where it applies, else (and always with
        graph=True) the FaceMesh graph's on the face's region, where it describes that face (`mesh_fits_box`).
        others: a graph mesh that describes another face (a neighbour's, the face above a box on a backpack) is added
        after `faces` as a face of its own, boxed by its landmarks' extent, scored a hair above the box it came from
        (where both pass the verifier and one holds the other, the one with landmarks stays)."""
        extra = []
        for f in faces:
            lm = None if graph else self._fast_mesh(rgb, f)
            if lm is not None:
                f.landmarks = lm
                f.keypoints = template_keypoints(lm)
                continue
            lm = self._mesh_in_box(rgb, f.box)
            if lm is None:
                continue
            if mesh_fits_box(lm, f.box):
                f.landmarks = lm
                f.keypoints = keypoints_from_mesh(lm)
            elif others and (box := mesh_box(lm, rgb.shape)) is not None:
                extra.append(Face(box, float(np.nextafter(f.score, np.inf)), keypoints_from_mesh(lm), lm, f.detection,
                                  f.mirrored, f.robust))
        return faces + extra

    def _both_meshes(self, rgb: np.ndarray, faces: list[Face], keep_unmeshed: bool = False) -> list[Face]:
        """The faces that get landmarks, once per mesh: the fast path's (the graph's where it passes a face over)
        and, for the faces the fast path read (with BOTH_MESHES), a copy with the FaceMesh graph's. On a
        mirror-completed or filled face the two differ, and either may be the one whose aligned crop the verifier
        passes. keep_unmeshed: the faces neither mesh reads stay too, on the detector's keypoints."""
        first = self._with_mesh(rgb, [replace(f) for f in faces], others=False)
        out = [g for g in first if g.landmarks is not None or keep_unmeshed]
        if BOTH_MESHES and self.fast:  # a fresh copy for the graph, of the faces the fast path read (no iris points)
            fast = [replace(f) for f, g in zip(faces, first, strict=True)
                    if g.landmarks is not None and np.isnan(g.landmarks[-N_IRIS:]).all()]
            out += [g for g in self._with_mesh(rgb, fast, graph=True, others=False) if g.landmarks is not None]
        return out

    def _mesh_face(self, rgb: np.ndarray, padded: np.ndarray, p: int, scale: float = 1.0) -> Face | None:
        """The mesh alone, on the image and then on `padded` (the image at `scale` inside a p px border); box = the
        landmarks' extent."""
        lm = self.mesh(rgb)
        if lm is None:
            lm = self.mesh(padded)
            if lm is None:
                return None
            lm = (lm - p) / scale
        box = mesh_box(lm, rgb.shape)
        return None if box is None else Face(box, 1.0, keypoints_from_mesh(lm), lm, "mesh")

    @staticmethod
    def _verified(rgb: np.ndarray, faces: list[Face], verifier: Verifier | None, threshold: float,
                  crop_size: int) -> list[Face]:
        """The faces whose aligned crop the verifier scores at `threshold` or more (all of them without one)."""
        if verifier is None or not faces:
            return faces
        scores = verifier(np.stack([f.aligned(rgb, crop_size)[0] for f in faces]))
        return [f for f, p in zip(faces, scores, strict=True) if p >= threshold]

    def propose(self, rgb: np.ndarray) -> list[Face]:
        """The detector step's faces with their landmarks: what `find_faces` verifies first."""
        return self._with_mesh(rgb, self.detect(rgb))

    def find_faces(self, rgb: np.ndarray, verifier: Verifier | None = None, threshold: float = 0.5,
                   crop_size: int = 256, whole_image: bool = True, verify: bool = False,
                   fallback_verifier: tuple[Verifier, float] | None = None,
                   tile_verifier: tuple[Verifier, float] | None = None,
                   proposed: list[Face] | None = None, detector_only: bool = False,
                   whole_verifier: tuple[Verifier, float] | None = None, robust: bool = True) -> list[Face]:
        """Every face with landmarks where the mesh finds them, found by the cascade in the module docstring.

        With a verifier, a face from the fallback steps counts only when the verifier scores its aligned crop at
        `threshold` or more, one the detector found on the image at DETECTED_THRESHOLD (a face the detector found
        keeps the detector's score, one from the mesh or the whole image gets the verifier's); faces it rejects
        send the search on to the next step. Without one, verify=True (the predictor) stops after the detector
        steps; verify=False (preparing a dataset that is all faces) lets the mesh-only step answer unverified and
        skips the whole-image and tile steps, as does whole_image=False. fallback_verifier (verifier, threshold),
        when given, decides the fallback steps instead: the predictor screens the detector's faces with the
        teacher's own face head and leaves the fallbacks, where no detection at the usual confidence vouches for a
        face, to the separate face network. tile_verifier (verifier, threshold), when given, decides the tile step
        (the predictor asks both networks there: a cat's face or a coin on a tile passes one of them, not both);
        whole_verifier, the whole-image step (the predictor adds a network trained on faces under full-width bands).
        proposed: this image's `propose` output, when the caller already has it (the batch engine proposes the faces
        of several files first, to verify them in one model pass). detector_only: the first step alone (the
        detector on the image, verified). robust: the occlusion-robust detector's step (`OCCLUDED_STEP`; only with
        a verifier)."""
        # landmarks first, so the verifier sees the crop the models will (a verifier that is the age model itself,
        # `inference.finding.TrunkGuard`, then answers both from one pass)
        faces = self._verified(rgb, self.propose(rgb) if proposed is None else proposed, verifier,
                               min(threshold, DETECTED_THRESHOLD), crop_size)
        step_verifier, step_threshold = fallback_verifier or (verifier, threshold)
        if faces and step_verifier is not None and not detector_only:
            faces = self._unnested(rgb, faces, step_verifier, step_threshold, crop_size, whole_verifier)
            if NESTED_DUPLICATES and len(faces) > 1:
                faces = without_nested(faces)
        if faces and not detector_only and tile_verifier is not None:
            faces = faces + self._more_faces(rgb, faces, tile_verifier, crop_size)
        if faces or detector_only:
            return faces
        verifier, threshold = step_verifier, step_threshold
        h, w = rgb.shape[:2]
        faces, padded, p, scale = self._padded_faces(rgb)
        faces = self._verified(rgb, self._with_mesh(rgb, faces), verifier, threshold, crop_size)
        if faces and tile_verifier is not None and MORE_FACES_AFTER_PADDED and max(h, w) >= MORE_FACES_MIN_SIDE:
            faces = faces + self._more_faces(rgb, faces, tile_verifier, crop_size)
        if faces:
            return faces
        if verifier is None and verify:
            return []
        if OCCLUDED_STEP and robust and verifier is not None and occluded_available():
            faces = self._verified(rgb, self._with_mesh(rgb, self._robust_faces(rgb, padded, p, scale)),
                                   *self._robust_check(verifier, threshold, tile_verifier), crop_size)
            if faces:
                return faces
        face = self._mesh_face(rgb, padded, p, scale)
        if face is not None and (verifier is None
                                 or self._vouched(face, rgb, verifier, threshold, crop_size) is not None):
            return [face]
        if verifier is None or not whole_image:
            return []
        if flat_image(rgb):  # a flat image holds no face, whole or on a tile
            return []
        shaped = crop_shaped(rgb)
        tiles, need = tile_verifier or (verifier, threshold)
        tiles_first = max(h, w) >= WHOLE_AFTER_TILES_MIN_SIDE
        if tiles_first and (faces := self.tile_steps(rgb, (tiles, need), crop_size)):
            return faces
        whole = self._whole(rgb, crop_size, whole_verifier or (verifier, threshold)) if shaped else None
        if whole is not None:
            return [whole]
        if not tiles_first and (faces := self.tile_steps(rgb, (tiles, need), crop_size)):
            return faces
        if OCCLUDED_STEP and robust and occluded_available():  # an occluded face in a scene, too small for step 2b
            for n in OCCLUDED_TILE_GRIDS:
                cands = self.detect_tiled(rgb, n, max_face=OCCLUDED_TILE_MAX_FACE, model=OCCLUDED)
                faces = self._verified(rgb, self._with_mesh(rgb, cands),
                                       *self._robust_check(verifier, threshold, tile_verifier), crop_size)
                if faces:
                    return faces
        if shaped:  # last, the most speculative steps: a face crop with one half hidden, or its middle
            return self._mirrored(rgb, verifier, threshold, crop_size) or (
                self._filled(rgb, verifier, threshold, crop_size, robust) if FILL_STEP else [])
        return []

    def _more_faces(self, rgb: np.ndarray, found: list[Face], verifier: tuple[Verifier, float],
                    crop_size: int) -> list[Face]:
        """Faces of the MORE_FACES_GRID tiles that overlap none of `found` (neither nested nor by IoU), verified,
        where the smallest found face is under MORE_FACES_BELOW of the long side, or under MORE_FACES_LARGE_BELOW in
        an image BESIDE_LARGE_MIN_SIDE long or longer (then tiles of a `halved` copy); [] otherwise."""
        side = max(rgb.shape[:2])
        smallest = min(f.box[2] - f.box[0] for f in found) / side
        beside_large = MORE_FACES_BELOW <= smallest < MORE_FACES_LARGE_BELOW and side >= BESIDE_LARGE_MIN_SIDE
        if smallest >= MORE_FACES_BELOW and not beside_large:
            return []
        more = self._tile_faces(rgb, MORE_FACES_GRID, found, verifier, crop_size, halved=beside_large)
        return without_nested(more + self._finer(rgb, found + more, verifier, crop_size, MORE_FACES_GRID))

    def _finer(self, rgb: np.ndarray, found: list[Face], verifier: tuple[Verifier, float], crop_size: int,
               grid: int) -> list[Face]:
        """The faces of a grid finer than `grid` (`fine_grid`, from the smallest face found) that overlap none of
        `found`, verified; [] where no finer grid is called for."""
        smallest = min(f.box[2] - f.box[0] for f in found)
        n = fine_grid(max(rgb.shape[:2]), smallest)
        if n <= grid:
            return []
        # the grid is sized for faces as small as the smallest found: a face much larger would have shown on the
        # coarser tiles, and one found only now is a texture more often than a face (a helmet's rim beside a face)
        return without_nested([f for f in self._tile_faces(rgb, n, found, verifier, crop_size, halved=True)
                               if f.box[2] - f.box[0] <= FINE_LARGEST * smallest])

    def _tile_faces(self, rgb: np.ndarray, n: int, found: list[Face], verifier: tuple[Verifier, float],
                    crop_size: int, halved: bool) -> list[Face]:
        """The verified faces of the n x n tiles that overlap none of `found` (neither nested nor by IoU)."""
        new = [t for t in self.detect_tiled(rgb, n, halved=halved)
               if not any(iou(t.box, f.box) > 0.1 or inside(t.box, f.box) or inside(f.box, t.box) for f in found)]
        return self._verified(rgb, self._with_mesh(rgb, new), *verifier, crop_size) if new else []

    def tile_steps(self, rgb: np.ndarray, verifier: tuple[Verifier, float], crop_size: int,
                   beside: list | None = None) -> list[Face]:
        """The tile steps' verified faces: the first of TILE_GRIDS that gives any (with the finer grid sized from them,
        in a large photo the crowd around them), else with LONE_TILES in an image FINE_MIN_SIDE long or longer the
        finest grid's (one small face in a large photo). beside: boxes of faces the ImageNet check turned away (a cat's
        face found first, the tiles never read): the tiles' faces overlapping one by VETOED_SAME or more are left out,
        and no finer grid is read."""
        grids = [(n, False, beside is None) for n in TILE_GRIDS]  # (tiles per side, halved copy, finer grid after)
        if LONE_TILES and max(rgb.shape[:2]) >= FINE_MIN_SIDE:
            grids.append((FINE_MAX_GRID, True, False))
        for n, halved, finer in grids:
            cands = self.detect_tiled(rgb, n, halved=halved)
            if beside is not None:
                cands = [t for t in cands if all(iou(t.box, tuple(b)) < VETOED_SAME for b in beside)]
            faces = self._verified(rgb, self._with_mesh(rgb, cands), *verifier, crop_size)
            if faces:
                return faces + (self._finer(rgb, faces, verifier, crop_size, n) if finer else [])
        return []

    def _mirrored(self, rgb: np.ndarray, verifier: Verifier, threshold: float, crop_size: int) -> list[Face]:
        """The mirror step (MIRROR_AXES): the short-range detector (then on the padded copy) on each mirror-completed
        copy of the image (in colour, MIRROR_MIN_CHROMA; shrunk to MIRROR_MAX_SIDE); faces centred on their axis, wide
        enough and with landmarks, verified on the completed copy's aligned crop. Returns the best-verified one at `threshold` (MIRROR_SURE at least) or
        more, in image pixels, keypoints and landmarks included (the hidden half's are its mirror image), detection
        "padded" (the detector on a re-framed copy of the image) and `mirrored` set, or []."""
        if chroma(rgb) < MIRROR_MIN_CHROMA:
            return []
        small, k = shrunk(rgb, MIRROR_MAX_SIDE)  # the image at scale k
        sw = small.shape[1]
        cands, crops = [], []
        for a in MIRROR_AXES:
            axis = int(round(a * sw))
            for side in ("left", "right"):
                img, dx = mirror_completed(small, axis, side)
                if img.shape[1] < 8:
                    continue
                # the short-range model alone: the face of a face crop fills it (a LARGE_FACE), where the full range
                # adds nothing but time
                found = self._detect(img, 0)
                if not found:
                    padded, p, scale = pad_border_capped(img)
                    found = self._detect(padded, 0)
                    for f in found:
                        f.box = tuple((v - p) / scale for v in f.box)
                        f.keypoints = (f.keypoints - p) / scale
                mid = img.shape[1] / 2
                found = [f for f in found if f.box[2] - f.box[0] >= MIRROR_MIN_WIDTH * sw
                         and abs((f.box[0] + f.box[2]) / 2 - mid) <= MIRROR_CENTRED * (f.box[2] - f.box[0])]
                for f in self._both_meshes(img, found):
                    crops.append(align_face(img, f.keypoints, crop_size)[0])
                    off = np.array([dx, 0], np.float32)
                    box = box_back(f.box, k, rgb.shape, dx)
                    cands.append(Face(box, f.score, (f.keypoints + off) / k, (f.landmarks + off) / k, "padded",
                                      mirrored=True))
        if not cands:
            return []
        scores = np.asarray(verifier(np.stack(crops)), np.float64)
        best = int(np.argmax(scores))
        if scores[best] < max(threshold, MIRROR_SURE) or cands[best].box[2] - cands[best].box[0] < 4:
            return []
        cands[best].score = float(scores[best])
        return [cands[best]]

    def _filled(self, rgb: np.ndarray, verifier: Verifier, threshold: float, crop_size: int,
                robust: bool = True) -> list[Face]:
        """The fill step (FILL_STEP): the largest flat region (`flat_region`, FILL_SHARE of the image) inpainted from
        its surroundings, then the filled copy (shrunk to FILL_MAX_SIDE) read by the detector, the detector on its
        padded copy and (with `robust` and FILL_ROBUST) the occlusion-robust detector on both, in turn, until one
        gives a face verified on the filled copy's aligned crop at `threshold` (FILL_SURE at least): faces with
        landmarks, or the robust detector's on its own keypoints. Returns the best one in image pixels, detection
        "padded" (the detector on a re-framed copy) and `mirrored` set (the strict people veto), or []."""
        small, k = shrunk(rgb, FILL_MAX_SIDE)
        mask = flat_region(small)
        if not FILL_SHARE[0] <= float(mask.mean()) / 255 <= FILL_SHARE[1]:
            return []
        fill = cv2.inpaint(np.ascontiguousarray(small), mask, 7, cv2.INPAINT_TELEA)
        need = max(threshold, FILL_SURE)
        ask_robust = robust and FILL_ROBUST and OCCLUDED_STEP and occluded_available()

        def candidates():  # (faces, whether the robust detector's), read lazily in turn
            yield self.detect(fill), False
            faces, padded, p, scale = self._padded_faces(fill)
            yield faces, False
            if ask_robust:
                yield self._detect(fill, OCCLUDED), True
                yield _unpadded(self._detect(padded, OCCLUDED), p, scale, fill.shape), True

        for found, from_robust in candidates():
            # the robust detector's faces the meshes miss are aligned on its own keypoints, as in its step
            found = self._both_meshes(fill, found, keep_unmeshed=from_robust)
            if not found:
                continue
            scores = np.asarray(verifier(np.stack([f.aligned(fill, crop_size)[0] for f in found])), np.float64)
            best = int(np.argmax(scores))
            if scores[best] < need:
                continue
            f = found[best]
            box = box_back(f.box, k, rgb.shape)
            if box[2] - box[0] < 4 or box[3] - box[1] < 4:
                continue
            lm = None if f.landmarks is None else f.landmarks / k
            return [Face(box, float(scores[best]), f.keypoints / k, lm, "padded", mirrored=True, robust=f.robust)]
        return []

    def close(self) -> None:
        for obj in [self._mesh, *self._det.values()]:
            if obj is not None and hasattr(obj, "close"):  # mediapipe graphs; LiteRT interpreters just go
                obj.close()
        self._mesh, self._det, self._fast = None, {}, None
