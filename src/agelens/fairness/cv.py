"""k-fold cross-validation: group-safe folds (data.splits.kfold_split), one training run per fold on views of the
prepared caches, mean ± std of MAE / CMAE / bias score. Resumable: finished folds are skipped, interrupted ones resume."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..data.cache import subset_cache
from ..data.prepare import list_records, prepare_caches
from ..data.splits import kfold_parts, records_fingerprint, save_split
from ..errors import ConfigError
from ..utils import atomic_write_json

CV_KEYS = ("mae", "cmae", "bias_score", "cs5")


def cv_dir(cfg: RunConfig, folds: int) -> Path:
    return Path(cfg.out_dir) / f"{cfg.name}_cv{folds}"


def _pin_numerics(cfg: RunConfig, result: dict, log) -> None:
    """With train.numerics "auto", the later folds train at the numerics the first fold's timing probe chose: a probe
    per fold picked fp32 for one and bf16 for the next, and folds at two precisions are not one recipe."""
    chosen = result.get("numerics")
    if cfg.train.numerics == "auto" and chosen:
        cfg.train.numerics = str(chosen)
        log(f"the folds train at {chosen} (the first fold's choice; set train.numerics to choose)")


def run_cv(cfg: RunConfig, folds: int, progress: bool = True, log=print) -> dict:
    """Train and test every fold; writes OUT_DIR/NAME_cvK/{foldI/..., splits/foldI.json, cv.json}."""
    from ..train.run import train_and_test

    cfg = copy.deepcopy(cfg)  # `_pin_numerics` sets the later folds' numerics on this copy, not the caller's config
    listing = list_records(cfg.data)
    recs = listing.records
    # too few groups: refused before the caches are made
    fold_list = kfold_parts(recs, folds, cfg.data.val_frac, cfg.data.split_seed)
    root = cv_dir(cfg, folds)
    _same_records(root, recs, cfg.data.root, log)
    donors = prepare_caches(cfg.data, ("train", "val", "test"), progress=progress, listing=listing)  # cached once
    rows = []
    for i, parts in enumerate(fold_list):
        fcfg = copy.deepcopy(cfg)
        fcfg.out_dir, fcfg.name = str(root), f"fold{i}"
        metrics_p = fcfg.run_dir / "test" / "metrics.json"
        if (fcfg.run_dir / "config.yaml").is_file():  # a fold made earlier counts only under the same recipe
            changed = recipe_changes(fcfg.run_dir / "config.yaml", fcfg)
            if changed:
                raise ConfigError(f"{root} holds folds of another recipe ({'; '.join(changed[:4])}"
                                  f"{'; ...' if len(changed) > 4 else ''}): give this one its own name=, or remove "
                                  f"{root} to make them again")
        if metrics_p.is_file():
            log(f"fold {i + 1}/{folds} (fold{i}): finished earlier, skipped ({metrics_p})")
            done = json.loads(metrics_p.read_text())
            rows.append({"fold": i, **_pick(done)})
            _pin_numerics(cfg, done, log)
            continue
        split_p = root / "splits" / f"fold{i}.json"
        save_split(split_p, recs, parts, dataset=cfg.data.dataset, root=cfg.data.root, seed=cfg.data.split_seed,
                   fold=i, folds=folds)
        fcfg.data.split_file = str(split_p)
        caches = {k: subset_cache([recs[j] for j in v], list(donors.values()), f"{split_p}:{k}") if v else None
                  for k, v in parts.items()}
        resume = (fcfg.run_dir / "last.pt").is_file()
        log(f"fold {i + 1}/{folds} (fold{i}): train {len(parts['train'])}, val {len(parts['val'])}, test {len(parts['test'])}"
            + (" (resuming)" if resume else ""))
        res = train_and_test(fcfg, resume=resume, progress=progress, log=log, caches=caches)
        rows.append({"fold": i, **_pick(res["test"])})
        _pin_numerics(cfg, res, log)
    summary = {"folds": folds, "config": cfg.name, "runs": str(root), "per_fold": rows,
               # a fold without a value (a bias score with one age bin) is left out of that key's mean and std
               "mean": {k: _round(np.nanmean(v)) if np.isfinite(v).any() else None
                        for k in CV_KEYS for v in [np.array([r[k] for r in rows], float)]},
               "std": {k: _round(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else None  # one value: no spread
                       for k in CV_KEYS for v in [np.array([r[k] for r in rows], float)]}}
    atomic_write_json(root / "cv.json", summary)
    return summary


STATE = "records.json"  # the records the folds were made from (`_same_records`)


def _same_records(root: Path, recs: list, data_root: str, log) -> None:
    """ConfigError where the cv folder's folds were made from other records than the dataset lists now (the folds
    are made anew each run: a resume would mix folds of the old and the new records); else records them."""
    now = {"records": len(recs), "fingerprint": records_fingerprint(recs, data_root)}
    p = root / STATE
    try:
        was = json.loads(p.read_text())
    except (OSError, ValueError):
        was = None
    if isinstance(was, dict) and "fingerprint" in was:
        if was["fingerprint"] != now["fingerprint"]:
            raise ConfigError(f"{root} holds folds of {was.get('records')} records, the dataset lists {len(recs)} "
                              f"now{' (the same count: files or labels changed)' if was.get('records') == len(recs) else ''}: "
                              f"a resume would mix old and new folds; remove {root} (or give this cv its own name=) to "
                              "start afresh")
        return
    if any(root.glob("fold*/config.yaml")):
        log(f"{root}: folds made before their records were recorded, taken as they are")
    atomic_write_json(p, now)


IGNORED = ("name", "out_dir", "data.split_file")  # a fold's own; the rest is the recipe


def recipe_changes(saved_yaml: Path, cfg: RunConfig) -> list[str]:
    """'key: saved → now' for every setting of `cfg` that differs from a run's saved config.yaml (less IGNORED)."""
    import yaml

    from ..config import config_changes

    return config_changes(yaml.safe_load(saved_yaml.read_text()) or {}, cfg, IGNORED)


def _round(x) -> float:
    return round(float(x), 4)


def _pick(m: dict) -> dict:
    return {"n": int(m["n"]), **{k: float("nan") if m[k] is None else float(m[k]) for k in CV_KEYS}}  # None: n/a


def format_cv(summary: dict) -> str:
    """Plain-text table: one row per fold, then mean ± std (sample std over folds)."""
    head = f"{'fold':>6s} {'n':>6s} " + " ".join(f"{k:>14s}" for k in CV_KEYS)
    lines = [head]
    for r in summary["per_fold"]:
        lines.append(f"{r['fold']:>6d} {r['n']:>6d} " + " ".join(f"{'n/a':>14s}" if r[k] is None else f"{r[k]:>14.3f}"
                                                          for k in CV_KEYS))

    def mean_std(k: str) -> str:
        m, sd = summary["mean"][k], summary["std"][k]
        return f"{'n/a':>14s}" if m is None else f"{m:>7.3f} ± {'n/a' if sd is None else f'{sd:.2f}':<4s}"

    lines.append(f"{'mean':>6s} {'':>6s} " + " ".join(mean_std(k) for k in CV_KEYS))
    return "\n".join(lines)
