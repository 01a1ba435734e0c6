"""KNN refinement: age' = (1 − w)·age + w·Σ_k s_j·age_j / Σ_k s_j over the k training faces nearest in the model's
embedding (the pooled features before the head; cosine similarity s_j clipped at 0, faiss inner-product index on
L2-normalised vectors). k and w are tuned on the validation part (grid) and stored with the index in one .npz file
together with a fingerprint of the model, so an index is never applied to a model it was not built for."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, DataError
from ..models.weights import model_fingerprint
from ..utils import atomic_write_npz

K_GRID = (1, 3, 5, 10, 20, 50)
W_GRID = tuple(round(x, 2) for x in np.linspace(0, 1, 11))
FORMAT = "agelens-knn-1"


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_mean(sims: np.ndarray, ages: np.ndarray, k: int) -> np.ndarray:
    """Similarity-weighted mean neighbour age from the first k columns (neighbours sorted by similarity)."""
    s = np.clip(sims[:, :k], 0, None) + 1e-6
    return (s * ages[:, :k]).sum(1) / s.sum(1)


def refine(pred: np.ndarray, sims: np.ndarray, nb_ages: np.ndarray, k: int, w: float) -> np.ndarray:
    """(1 − w)·pred + w·knn_mean."""
    return (1 - w) * np.asarray(pred, np.float64) + w * knn_mean(sims, nb_ages, k)


def tune(pred: np.ndarray, true: np.ndarray, sims: np.ndarray, nb_ages: np.ndarray, ks=K_GRID, ws=W_GRID,
         criterion: str = "mae") -> tuple[int, float, list[dict]]:
    """Grid search of (k, w) on validation predictions; criterion mae or cmae (mean per-age-bin MAE)."""
    from ..evaluate.metrics import per_bin_mae

    if criterion not in ("mae", "cmae"):
        raise ValueError(f"criterion must be mae|cmae, got {criterion!r}")
    grid, best = [], None
    for k in ks:
        if k > sims.shape[1]:
            continue
        for w in ws:
            p = refine(pred, sims, nb_ages, k, w)
            mae = float(np.abs(p - true).mean())
            cmae = float(np.mean(list(per_bin_mae(p, true).values())))
            grid.append({"k": int(k), "w": float(w), "mae": round(mae, 4), "cmae": round(cmae, 4)})
            score = mae if criterion == "mae" else cmae
            if best is None or score < best[0] - 1e-9:
                best = (score, int(k), float(w))
    if best is None:
        raise DataError(f"no k in {list(ks)} fits {sims.shape[1]} stored neighbours")
    return best[1], best[2], grid


@dataclass
class KnnIndex:
    """A faiss inner-product index over L2-normalised training embeddings, their ages, and the tuned k, w."""

    index: object
    ages: np.ndarray
    k: int = 10
    w: float = 0.5
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_embeddings(cls, emb: np.ndarray, ages: np.ndarray, **meta: object) -> KnnIndex:
        import faiss

        x = _normalise(emb)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        return cls(index, np.asarray(ages, np.float32), meta=dict(meta))

    def search(self, emb: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, neighbour ages), each (N, k), best first."""
        k = min(k or self.k, self.index.ntotal)
        sims, idx = self.index.search(_normalise(emb), k)
        return sims, self.ages[np.clip(idx, 0, None)]

    def refine(self, pred: np.ndarray, emb: np.ndarray) -> np.ndarray:
        sims, nb = self.search(emb, self.k)
        return refine(pred, sims, nb, self.k, self.w).astype(np.float32)

    def check(self, fingerprint: str, what: str = "the model") -> None:
        """CheckpointError unless the index was built for a model with this fingerprint."""
        want = self.meta.get("fingerprint")
        if want != fingerprint:
            raise CheckpointError(f"KNN index {self.meta.get('path', '?')} was built for model {self.meta.get('model', '?')} "
                                  f"(fingerprint {want}), but {what} has fingerprint {fingerprint}; rebuild it with "
                                  f"`agelens index`")

    def save(self, path: str | Path) -> None:
        import faiss

        meta = {**self.meta, "format": FORMAT, "k": self.k, "w": self.w}
        meta.pop("path", None)
        atomic_write_npz(path, index=faiss.serialize_index(self.index), ages=self.ages,
                         meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))

    @classmethod
    def load(cls, path: str | Path) -> KnnIndex:
        import faiss

        p = Path(path)
        if p.is_dir():  # a folder: name the index file in it, if there is one
            found = sorted(p.glob("*.npz"))
            raise DataError(f"KNN index {p} is a folder; give the index file `agelens index -o` wrote"
                            + (f" (here: {', '.join(f.name for f in found[:3])})" if found else " (none here: *.npz)"))
        if not p.is_file():
            raise DataError(f"KNN index not found: {p}")
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode())
                index = faiss.deserialize_index(np.ascontiguousarray(z["index"]))
                ages = z["ages"].astype(np.float32)
        except (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError) as e:
            raise DataError(f"{p} is not a readable agelens KNN index ({type(e).__name__})") from None
        if meta.get("format") != FORMAT or index.ntotal != len(ages):
            raise DataError(f"{p} is not an agelens KNN index (format {meta.get('format')!r})")
        meta["path"] = str(p)
        return cls(index, ages, int(meta["k"]), float(meta["w"]), meta)


def build_index(model, cfg, train_cache, val_cache, numerics, *, model_name: str = "", ks=K_GRID, ws=W_GRID,
                criterion: str = "mae", progress: bool = True, log=print) -> KnnIndex:
    """Embed the training cache (centre crop, flip TTA as cfg.train.tta_flip), index it, tune (k, w) on the
    validation cache (both limited by data.max_train / data.max_eval)."""
    from ..evaluate.predict import predict_cache

    t0 = time.perf_counter()
    tta = cfg.train.tta_flip
    n_tr = min(len(train_cache), cfg.data.max_train or len(train_cache))
    _, _, emb = predict_cache(model, train_cache, cfg, numerics, tta_flip=tta, indices=np.arange(n_tr), progress=progress)
    idx = KnnIndex.from_embeddings(emb, train_cache.ages[:n_tr], fingerprint=model_fingerprint(
        model, cfg.data.crop_size, cfg.data.input_size), model=model_name, n=int(n_tr), dim=int(emb.shape[1]),
        tta_flip=tta, crop_size=cfg.data.crop_size, input_size=cfg.data.input_size, train_cache=str(train_cache.path))
    n_va = min(len(val_cache), cfg.data.max_eval or len(val_cache))
    pred, _, vemb = predict_cache(model, val_cache, cfg, numerics, tta_flip=tta, indices=np.arange(n_va), progress=progress)
    sims, nb = idx.search(vemb, max(ks))
    true = val_cache.ages[:n_va]
    idx.k, idx.w, grid = tune(pred, true, sims, nb, ks, ws, criterion)
    before = float(np.abs(pred - true).mean())
    after = float(np.abs(refine(pred, sims, nb, idx.k, idx.w) - true).mean())
    idx.meta.update({"val_cache": str(val_cache.path), "n_val": int(n_va), "criterion": criterion,
                     "k_grid": [int(k) for k in ks], "w_grid": [float(w) for w in ws], "grid": grid,
                     "val_mae_before": round(before, 4), "val_mae_after": round(after, 4),
                     "build_s": round(time.perf_counter() - t0, 1)})
    how = "tuned on" if len(ks) > 1 or len(ws) > 1 else "given; measured on"
    log(f"KNN index: {n_tr} training faces, {how} {n_va} validation faces → k={idx.k}, w={idx.w} "
        f"(val MAE {before:.3f} → {after:.3f})")
    return idx


def build_index_file(model_spec: str, output: str | Path, config: str | Path | None = None,
                     overrides: list[str] | None = None, criterion: str = "mae", progress: bool = True, log=print,
                     ks=None, ws=None):
    """`agelens index`: embed the model's training cache, tune (k, w) on its validation cache over the grids ks, ws
    (default knn.K_GRID, W_GRID; one value each fixes them), save atomically."""
    from ..data.prepare import prepare_caches
    from ..evaluate.prepared import eval_numerics, load_model_config

    model, cfg, card = load_model_config(model_spec, config, overrides)
    caches = prepare_caches(cfg.data, ("train", "val"), progress=progress)
    idx = build_index(model, cfg, caches["train"], caches["val"], eval_numerics(), model_name=str(card.get("name", model_spec)),
                      criterion=criterion, progress=progress, log=log, ks=ks or K_GRID, ws=ws or W_GRID)
    idx.save(output)
    return idx
