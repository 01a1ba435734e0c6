"""The names of the occlusion types and families, and the paper's training mix: constants only, so that configs and
the inference path can name occlusion types without loading the synthesizer."""

from __future__ import annotations

OCCLUSION_TYPES = ("sunglasses", "mask", "sunglasses+mask", "eye_block", "mouth_block", "eye+mouth_block")
PAPER_MIX = {"sunglasses": 0.15, "mask": 0.15, "sunglasses+mask": 0.20, "eye_block": 0.15, "mouth_block": 0.15,
             "eye+mouth_block": 0.20}  # paper 1, Table 7
# occluder families (issue 20): the paper's six types plus real-world families drawn by occlusion/families.py
FAMILIES: dict[str, tuple[str, ...]] = {
    "paper": OCCLUSION_TYPES, "fabric_mask": ("fabric_mask",), "scarf": ("scarf",), "hand": ("hand",), "cap": ("cap",),
    "hair": ("hair",), "object": ("object",), "eye_patch": ("eye_patch",), "face_shield": ("face_shield",),
    "thick_glasses": ("thick_glasses",), "texture_patch": ("texture_patch",),
    "combined": ("hand+sunglasses", "cap+fabric_mask", "scarf+sunglasses", "hair+fabric_mask", "cap+sunglasses"),
}
ALL_TYPES: tuple[str, ...] = tuple(dict.fromkeys(k for kinds in FAMILIES.values() for k in kinds))


def kinds_without(family: str, kinds: tuple[str, ...] = ALL_TYPES) -> tuple[str, ...]:
    """kinds less every kind of `family` and every double kind with one of the family's single kinds in it ("hand"
    leaves out "hand+sunglasses" too, "paper" every kind with sunglasses; "combined" only its double kinds), so
    that a model trained on the rest never sees the family (leave-one-family-out). ValueError for a family that is
    not in FAMILIES."""
    if family not in FAMILIES:
        raise ValueError(f"unknown occluder family {family!r}; families: {', '.join(FAMILIES)}")
    gone = set(FAMILIES[family])
    singles = {k for k in gone if "+" not in k}
    return tuple(k for k in kinds if k not in gone and not singles & set(k.split("+")))


__all__ = ["ALL_TYPES", "FAMILIES", "OCCLUSION_TYPES", "PAPER_MIX", "kinds_without"]
