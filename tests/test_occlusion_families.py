"""Real-world occluder families (issue 20): every kind draws on a real face's FaceMesh landmarks, changes the face,
leaves the far background alone, reports a plausible covered share, is seeded, and plugs into the mix/API."""

from __future__ import annotations

from importlib import resources

import cv2
import numpy as np
import pytest

from agelens.occlusion.synth import (
    ALL_TYPES,
    FAMILIES,
    OCCLUSION_TYPES,
    FaceFrame,
    OcclusionMix,
    occlude,
    styles_for,
)

NEW_KINDS = [k for k in ALL_TYPES if k not in OCCLUSION_TYPES]
PAD = 170  # grey margin around the face crop: the "far from the face" region
# how far (inter-iris distances outside the face oval) a kind may draw: a forearm or a microphone's handle runs off
# the face, a cap's crown sits above it; scarves and face shields are wider than the face and are not checked
REACH = {"hand": 3.0, "object": 2.0, "cap": 1.5, "hair": 1.3, "eye_patch": 1.2}


@pytest.fixture(scope="module")
def face() -> tuple[np.ndarray, np.ndarray]:
    """The bundled astronaut photo's face crop (FaceMesh landmarks) centred on a larger grey canvas."""
    from agelens.faces.detect import FaceAnalyzer
    from agelens.faces.prepare import largest_face, prepare_face
    from agelens.imageio import load_image

    an = FaceAnalyzer()
    rgb = load_image(str(resources.files("agelens") / "assets" / "astronaut.jpg"))
    crop, lm = prepare_face(rgb, an, 112, aligned=False, face=largest_face(an.find_faces(rgb)))
    assert lm is not None
    img = cv2.copyMakeBorder(crop, PAD, PAD, PAD, PAD, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    return img, np.asarray(lm, np.float64) + PAD


def _far(img: np.ndarray, lm: np.ndarray, reach: float) -> np.ndarray:
    """Pixels more than `reach` inter-iris distances outside the face oval."""
    fr = FaceFrame(lm, img.shape[:2])
    dist = cv2.distanceTransform((~fr.oval_mask).astype(np.uint8), cv2.DIST_L2, 5)
    return dist > reach * fr.scale


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_every_new_kind_draws_on_the_face_only_and_is_seeded(face, kind):
    img, lm = face
    a = occlude(img, lm, kind, np.random.default_rng(3))
    b = occlude(img, lm, kind, np.random.default_rng(3))
    c = occlude(img, lm, kind, np.random.default_rng(4))
    assert a.image.shape == img.shape and a.image.dtype == np.uint8 and a.kind == kind
    assert a.style in styles_for(kind)
    assert 0 < a.fraction <= 1
    assert np.array_equal(a.image, b.image) and a.style == b.style and a.fraction == b.fraction
    assert not np.array_equal(a.image, c.image)
    fr = FaceFrame(lm, img.shape[:2])
    changed = np.abs(a.image.astype(int) - img).max(2) > 0
    assert changed[fr.oval_mask].mean() > 0.02
    if "face_shield" not in kind and "scarf" not in kind:
        reach = max(REACH.get(k, 1.0) for k in kind.split("+"))
        far = _far(img, lm, reach)
        assert far.mean() > 0.05 and not changed[far].any(), f"{kind} drew {reach} face units away from the face"


@pytest.mark.parametrize("kind", ["fabric_mask", "hand", "cap", "hair", "object", "texture_patch"])
def test_every_style_of_a_family_draws(face, kind):
    img, lm = face
    small = cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    styles = styles_for(kind)
    for i, style in enumerate(styles[:: max(1, len(styles) // 4)]):
        o = occlude(small, lm * 0.5, kind, np.random.default_rng(i), style=style)
        assert o.style == style and 0 < o.fraction <= 1


def test_families_api():
    assert FAMILIES["paper"] == OCCLUSION_TYPES and ALL_TYPES[:6] == OCCLUSION_TYPES
    assert {k for kinds in FAMILIES.values() for k in kinds} == set(ALL_TYPES)
    assert len(FAMILIES["combined"]) >= 3 and all("+" in k for k in FAMILIES["combined"])
    for kind in NEW_KINDS:
        assert len(styles_for(kind)) >= 5, kind
    with pytest.raises(ValueError, match="unknown occlusion type"):
        styles_for("balaclava")
    with pytest.raises(ValueError, match="unknown occlusion type"):
        occlude(np.zeros((64, 64, 3), np.uint8), np.zeros((478, 2)), "balaclava", np.random.default_rng(0))
    mix = OcclusionMix({"fabric_mask": 1.0, "hand": 0.5, "cap+fabric_mask": 0.5})
    assert {mix.sample(np.random.default_rng(i)) for i in range(60)} == {"fabric_mask", "hand", "cap+fabric_mask"}
    with pytest.raises(ValueError):
        OcclusionMix({"balaclava": 1.0})


def test_unknown_style_raises(face):
    img, lm = face
    with pytest.raises(ValueError, match="unknown style"):
        occlude(img, lm, "hand", np.random.default_rng(0), style="nope")


def test_parse_mix_accepts_family_kinds():
    from agelens.cli import parse_mix

    mix = parse_mix("fabric_mask=1,hand=0.5,scarf+sunglasses=0.25")
    assert mix == {"fabric_mask": 1.0, "hand": 0.5, "scarf+sunglasses": 0.25}
    OcclusionMix(mix)


def test_kinds_without_leaves_a_family_and_the_double_kinds_that_hold_it_out():
    from agelens.occlusion.kinds import ALL_TYPES, FAMILIES, kinds_without

    rest = kinds_without("hand")
    assert "hand" not in rest and "hand+sunglasses" not in rest and "sunglasses" in rest and "scarf" in rest
    assert not {"sunglasses", "sunglasses+mask", "scarf+sunglasses", "cap+sunglasses"} & set(kinds_without("paper"))
    assert "fabric_mask" in kinds_without("paper")
    # "combined": only the double kinds go, their parts stay
    assert set(ALL_TYPES) - set(kinds_without("combined")) == set(FAMILIES["combined"])
    for fam, kinds in FAMILIES.items():  # never a kind of the family left, never anything else lost but doubles
        rest = kinds_without(fam)
        assert not set(kinds) & set(rest) and all("+" in k for k in set(ALL_TYPES) - set(rest) - set(kinds))
    with pytest.raises(ValueError, match="unknown occluder family 'hands'"):
        kinds_without("hands")


def test_random_shapes_draw_every_style_seeded_and_stay_out_of_the_families(face):
    from agelens.occlusion.families import RANDOM_BOUNDS, RANDOM_STYLES

    img, lm = face
    small = cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    assert "random_shape" not in ALL_TYPES  # a training aid, not a family: the shipped recipes' kinds are unchanged
    assert styles_for("random_shape") == RANDOM_STYLES and len(RANDOM_STYLES) >= 20
    for i, style in enumerate(RANDOM_STYLES):
        o = occlude(small, lm * 0.5, "random_shape", np.random.default_rng(i), style=style)
        assert o.style == style and RANDOM_BOUNDS[0] - 0.01 <= o.fraction <= RANDOM_BOUNDS[1] + 0.01, (style, o.fraction)
        if style.endswith("translucent"):
            assert o.alpha.max() < 0.85  # see-through: the face shows under it
    a, b = (occlude(img, lm, "random_shape", np.random.default_rng(7)) for _ in range(2))
    assert np.array_equal(a.image, b.image) and a.style == b.style
    assert occlude(img, lm, "random_shape+sunglasses", np.random.default_rng(1)).kind == "random_shape+sunglasses"
