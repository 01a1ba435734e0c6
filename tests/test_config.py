import re

import pytest

from agelens.config import config_from_dict, config_to_dict, load_config, parse_overrides
from agelens.errors import ConfigError


def test_defaults_validate_and_roundtrip():
    cfg = load_config()
    assert cfg.model.backbone == "resnet34"
    again = config_from_dict(config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  head: coral\ntrain:\n  lr: 0.01\n")
    cfg = load_config(p, ["train.lr=3e-4", "train.head_lr=none", "data.aligned=false", "model.backbone=resnet18"])
    assert cfg.model.head == "coral" and cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.head_lr is None and cfg.data.aligned is False and cfg.model.backbone == "resnet18"


def test_parse_overrides_nested():
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


@pytest.mark.parametrize("override,fragment", [
    ("train.lr=-1", "train.lr must be > 0"),
    ("train.epochs=abc", "train.epochs must be an integer"),
    ("train.bogus=1", "unknown config key 'train.bogus'"),
    ("model.head=nope", "unknown head 'nope'"),
    ("model.backbone=vgg", "unknown backbone 'vgg'"),
    ("data.crop_size=999", "data.crop_size"),
    ("train.numerics=int4", "train.numerics"),
    ("data.aligned=maybe", "data.aligned must be true/false"),
    ("noequals", "not of the form key=value"),
    # accepted before, then a division by zero mid-training (log_every) or nonsense silently trained
    ("train.log_every=0", "train.log_every must be >= 1"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
    ("train.grad_clip=-1", "train.grad_clip must be >= 0"),
    ("train.warmup_epochs=-1", "train.warmup_epochs must be >= 0"),
    ("data.max_train=-5", "data.max_train / data.max_eval must be >= 0"),
    ("model.mwr_iterations=0", "model.mwr_iterations must be >= 1"),
    # each of these a mutation of the check once let through (a mutation audit)
    ("data.val_frac=0.5,data.test_frac=0.5", "data.val_frac + data.test_frac must be in [0, 1)"),
    ("model.min_age=40,model.max_age=40", "model.min_age/max_age must satisfy"),
    ("fairness.dro_by=[age_bin],fairness.dro_within=[age_bin]", "fairness.dro_within must be a strict subset"),
    ("train.augment=3.5", "train.augment must be in [0, 3]"),
    ("model.dldl_sigma=0", "model.dldl_sigma must be > 0"),
    ("data.cache_size=16,data.crop_size=16", "data.cache_size must be >= 32"),
    ("train.epochs=true", "train.epochs must be an integer"),
    ("train.task=occlusion,model.head=binary", "train.task=occlusion needs occlusion.enabled=true"),
    ("train.kd_weight=1,model.head=coral", "train.kd_weight needs a distribution head"),
    ("train.balance_by=[gender,gender]", "train.balance_by must be a non-empty list"),
])
def test_bad_values_name_the_key(override, fragment):
    from agelens.models import check_config

    with pytest.raises(ConfigError, match=re.escape(fragment)):
        check_config(load_config(None, override.split(",") if "=[" not in override else _split(override)))


def _split(text: str) -> list[str]:
    """'a=[x,y],b=1' → ['a=[x,y]', 'b=1'] (commas inside brackets kept)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def test_values_are_read_as_a_user_writes_them():
    cfg = load_config(None, ["data.aligned=1", "train.balance_by=[age_bin, gender]", "model.head_args={scale: 2}"])
    assert cfg.data.aligned is True and cfg.train.balance_by == ["age_bin", "gender"]
    assert parse_overrides(["a.b=x=y"]) == {"a": {"b": "x=y"}}
    old = config_to_dict(load_config())
    old["train"]["a_key_of_an_older_version"] = 3  # a saved run of another version: ignored, not refused
    assert config_to_dict(config_from_dict(old)) == config_to_dict(load_config())


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="come with the source repository, not the installed package"):
        load_config("configs/not_shipped_with_the_package.yaml")  # a README example run from another folder
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 2, column 1\)"):
        load_config(bad)
