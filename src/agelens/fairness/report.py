"""`agelens report`: one self-contained HTML page (plots embedded as base64 PNG) from a run or evaluation folder:
error by age, per-group MAE with bootstrap whiskers, age-bin confusion matrix, t-SNE of saved embeddings, Grad-CAM
(last feature map) and face-region attention heatmaps on a few cached test faces."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..evaluate.metrics import AGE_BINS, MIN_N, age_bin, fmt
from ..utils import atomic_write_text


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def locate(path: str | Path) -> tuple[Path, Path | None]:
    """(evaluation folder with metrics.json + predictions.csv, run folder or None)."""
    p = Path(path)
    if (p / "test" / "metrics.json").is_file():
        return p / "test", p
    if (p / "metrics.json").is_file():
        run = p.parent if (p.parent / "config.yaml").is_file() and (p.parent / "best.pt").is_file() else None
        return p, run
    raise DataError(f"{p} holds neither metrics.json nor test/metrics.json (a run or `agelens evaluate` folder)")


def read_predictions(eval_dir: Path) -> dict[str, np.ndarray]:
    p = eval_dir / "predictions.csv"
    if not p.is_file():
        raise DataError(f"no predictions.csv in {eval_dir}")
    with p.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("pred")]
    if not rows:
        raise DataError(f"{p} holds no predictions")
    return {"path": np.array([r["path"] for r in rows]), "age": np.array([float(r["age"]) for r in rows]),
            "pred": np.array([float(r["pred"]) for r in rows]), "gender": np.array([r.get("gender", "") for r in rows]),
            "race": np.array([r.get("race", "") for r in rows])}


# ---- plots ---------------------------------------------------------------------------------------------------------


def plot_error_by_age(age: np.ndarray, pred: np.ndarray) -> str:
    import matplotlib.pyplot as plt

    err = pred - age
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    ax[0].scatter(age, err, s=4, alpha=0.35, color="#1f77b4")
    ax[0].axhline(0, color="k", lw=0.8)
    ax[0].set(xlabel="true age", ylabel="predicted − true (years)", title="signed error by age")
    edges = np.arange(0, max(5, int(age.max()) + 6), 5)
    mids, maes, ns = [], [], []
    for lo in edges[:-1]:
        sel = (age >= lo) & (age < lo + 5)
        if sel.any():
            mids.append(lo + 2.5)
            maes.append(np.abs(err[sel]).mean())
            ns.append(sel.sum())
    ax[1].plot(mids, maes, "o-", color="#d62728")
    ax[1].set(xlabel="true age (5-year bands)", ylabel="MAE (years)", title="MAE by age")
    ax2 = ax[1].twinx()
    ax2.bar(mids, ns, width=4, alpha=0.15, color="gray")
    ax2.set_ylabel("faces", color="gray")
    return _png(fig)


def plot_groups(metrics: dict) -> str:
    import matplotlib.pyplot as plt

    ci = metrics.get("ci95", {})
    panels = [(k, t) for k, t in (("per_bin", "age bin"), ("per_gender", "gender"), ("per_race", "race"))
              if metrics.get(k)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.6), squeeze=False)
    attr = {"per_bin": "age_bin", "per_gender": "gender", "per_race": "race"}
    for ax, (key, title) in zip(axes[0], panels):
        names = list(metrics[key])
        vals = np.array([metrics[key][n] for n in names])
        # no whisker where a group has no interval (a group of one face): a zero-width one would read as precise
        lo = np.array([(ci.get(key, {}).get(n) or [np.nan, np.nan])[0] for n in names], float)
        hi = np.array([(ci.get(key, {}).get(n) or [np.nan, np.nan])[1] for n in names], float)
        ax.bar(range(len(names)), vals, color="#4c72b0")
        has = np.isfinite(lo) & np.isfinite(hi)
        if has.any():
            ax.errorbar(np.flatnonzero(has), vals[has], fmt="none", ecolor="k", capsize=3,
                        yerr=np.vstack([np.clip(vals - lo, 0, None)[has], np.clip(hi - vals, 0, None)[has]]))
        ax.axhline(metrics["mae"], color="k", ls="--", lw=0.8, label="overall MAE")
        by = metrics.get("groups", {}).get(attr[key], {}).get("by_group", {})
        ax.set_xticks(range(len(names)), [f"{n} ({by[n]['n']})" if n in by else n for n in names],
                      rotation=30, ha="right")
        ax.set(title=f"MAE per {title} (95 % CI; faces)", ylabel="MAE (years)")
    axes[0][0].legend(fontsize=8)
    return _png(fig)


def plot_confusion(age: np.ndarray, pred: np.ndarray) -> str:
    import matplotlib.pyplot as plt

    labels = [b for b, _, _ in AGE_BINS]
    pos = {b: i for i, b in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), int)
    for a, p in zip(age, pred):
        m[pos[age_bin(a)], pos[age_bin(max(0.0, p))]] += 1
    frac = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted age bin", ylabel="true age bin", title="confusion over age bins (row-normalised colour)")
    return _png(fig)


def plot_tsne(emb_file: Path, max_points: int = 1000, seed: int = 0) -> str | None:
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    with np.load(emb_file) as z:
        emb, age = z["embedding"].astype(np.float32), z["age"]
    if len(emb) < 4:
        return None
    sel = np.random.default_rng(seed).permutation(len(emb))[:max_points]
    x = emb[sel]
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    y = TSNE(2, perplexity=float(max(1.0, min(30, (len(x) - 1) / 3))), init="pca", random_state=seed).fit_transform(x)
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    sc = ax.scatter(y[:, 0], y[:, 1], c=age[sel], s=6, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="true age")
    ax.set(title=f"t-SNE of embeddings ({len(sel)} faces)", xticks=[], yticks=[])
    return _png(fig)


# ---- Grad-CAM and region attention ----------------------------------------------------------------------------


def grad_cam(model, x, regions=None) -> tuple[np.ndarray, float]:
    """Grad-CAM of the decoded age w.r.t. the backbone's last feature map (before region attention); (h, w) in
    [0, 1] and the age."""
    import torch

    store: dict = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = model.backbone.final.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            xx = x.clone().requires_grad_(True)  # a grad path even through an identity final block
            out = model(xx, regions)
            age = model.head.decode(out)[0]
            model.zero_grad(set_to_none=True)
            age.sum().backward()
    finally:
        h.remove()
    a = store["a"]
    weights = a.grad.mean((2, 3), keepdim=True)
    cam = torch.relu((weights * a).sum(1))[0].detach().float().numpy()
    return cam / (cam.max() + 1e-8), float(age[0].detach())


def _overlay(img: np.ndarray, heat: np.ndarray, cmap: str = "jet", alpha: float = 0.45) -> np.ndarray:
    import cv2
    import matplotlib

    h = cv2.resize(heat.astype(np.float32), img.shape[:2][::-1], interpolation=cv2.INTER_CUBIC)
    rgb = matplotlib.colormaps[cmap](np.clip(h, 0, 1))[..., :3] * 255
    return (img * (1 - alpha) + rgb * alpha).astype(np.uint8)


def plot_faces(model, cfg, cache, n: int = 6, said: str = "predicted") -> tuple[str, list[float] | None, dict]:
    """One row per sample face (one per age bin where possible): crop, Grad-CAM, region attention (or the region
    layout when the model has none). Returns the PNG, the learned region weights (None without attention) and
    {"cam_size": (h, w) of the last feature map, "faces", "no_evidence": faces whose CAM is 0 everywhere}.
    said: how the model's own answer is named over each face ("model alone" where the evaluation refined it)."""
    import cv2
    import matplotlib
    import matplotlib.pyplot as plt
    import torch

    from ..data.dataset import centre_crop
    from ..models.inputs import to_input
    from ..models.regions import REGION_NAMES, centre_view_landmarks, region_masks

    picks, seen = [], set()
    for i, a in enumerate(cache.ages):
        b = age_bin(a)
        if b not in seen:
            seen.add(b)
            picks.append(i)
        if len(picks) >= n:
            break
    model.eval()
    ra = model.region_attention
    fig, axes = plt.subplots(len(picks), 3, figsize=(7.5, 2.5 * len(picks)), squeeze=False)
    handles = [matplotlib.lines.Line2D([], [], color=matplotlib.colormaps["tab10"](k), label=n)
               for k, n in enumerate(REGION_NAMES)]
    no_evidence, cam_size = 0, None
    for row, i in zip(axes, picks):
        img = np.asarray(cache.images[i])
        view = centre_crop(img, min(cfg.data.crop_size, cache.size), cfg.data.input_size)
        masks = region_masks(centre_view_landmarks(cache.landmarks[i], cache.size, cfg.data.crop_size))
        x = to_input(torch.from_numpy(view[None]), *model.mean_std, "cpu", False)
        cam, pred = grad_cam(model, x, torch.from_numpy(masks[None]) if ra is not None else None)
        row[0].imshow(view)
        row[0].set_title(f"age {cache.ages[i]:g}, {said} {pred:.1f}", fontsize=8)
        cam_size = cam.shape
        if cam.max() > 0:
            row[1].imshow(_overlay(view, cam))
            row[1].set_title("Grad-CAM (last feature map)", fontsize=8)
        else:  # no cell's gradient-weighted features raise the age: a heat map of zeros would read as a uniform tint
            no_evidence += 1
            row[1].imshow(view)
            row[1].set_title("Grad-CAM: no positive evidence", fontsize=8)
        if ra is not None:
            w = ra.weight.detach().float().numpy()
            att = 1 + np.tensordot(w, masks, 1)
            span = max(1e-6, float(np.abs(att - 1).max()))
            row[2].imshow(_overlay(view, 0.5 + (att - 1) / (2 * span), "coolwarm"))
            row[2].set_title(f"region attention (1 ± {span:.3f})", fontsize=8)
        else:
            row[2].imshow(view)
            row[2].set_title("face regions (model without region attention)", fontsize=8)
        side = view.shape[0]
        for k in range(len(REGION_NAMES)):  # region outlines over either panel
            row[2].contour(cv2.resize(masks[k], (side, side), interpolation=cv2.INTER_LINEAR), levels=[0.5],
                           colors=[matplotlib.colormaps["tab10"](k)], linewidths=0.7)
        for ax in row:
            ax.axis("off")
    fig.legend(handles=handles, loc="lower center", ncol=len(REGION_NAMES), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    weights = [round(float(v), 4) for v in ra.weight.detach()] if ra is not None else None
    return _png(fig), weights, {"cam_size": cam_size, "faces": len(picks), "no_evidence": no_evidence}


def faces_note(info: dict, input_size: int, weights: list[float] | None) -> str:
    """The face panels' note: the Grad-CAM resolution, the faces without positive evidence, the region weights."""
    parts = []
    if info.get("cam_size"):
        h, w = info["cam_size"]
        parts.append(f"Grad-CAM on the backbone's last feature map, {h}×{w} cells over the {input_size} px input "
                     f"(one cell per {input_size // max(h, 1)} px; a coarse map can only point at a region).")
    if info.get("no_evidence"):
        parts.append(f"{info['no_evidence']} of {info['faces']} face(s): no positive evidence (the CAM is 0 in every "
                     "cell: no feature, weighted by its gradient, raises the age), drawn without a heat map.")
    if weights is not None:
        from ..models.regions import REGION_NAMES

        parts.append("Learned region weights: " + ", ".join(f"{n} {w:+.4f}" for n, w in zip(REGION_NAMES, weights)))
    return " ".join(parts)


# ---- page ----------------------------------------------------------------------------------------------------------


FEW_FACES = 10  # signed-error cells with fewer faces are drawn pale


def _left_out(group: dict) -> str:
    """The groups a gap leaves out for their size, with their face counts: "pacific (1), hispanic (2)"."""
    return ", ".join(f"{g} ({group['by_group'][g]['n']})" for g in group.get("left_out_of_difference") or [])


def signed_error_cells(metrics: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Mean signed error (NaN where empty) and face count per group (rows: genders, then races) × age bin."""
    groups = metrics.get("groups", {})
    rows, sizes, labels = [], [], []
    for attr in ("age_bin×gender", "age_bin×race"):
        by = groups.get(attr, {}).get("by_group", {})
        for g in sorted({k.split("|", 1)[1] for k in by}):
            cells = [by.get(f"{b}|{g}", {}) for b, _, _ in AGE_BINS]
            rows.append([c.get("mean_error", np.nan) for c in cells])
            sizes.append([c.get("n", 0) for c in cells])
            labels.append(g)
    return np.array(rows, float).reshape(-1, len(AGE_BINS)), np.array(sizes, int).reshape(-1, len(AGE_BINS)), labels


def plot_signed_error(metrics: dict) -> str | None:
    """Heatmap of the mean signed error (pred − true) per group × age bin: who is over- or under-estimated. Each
    cell gives its number of faces; cells of fewer than FEW_FACES are drawn pale (their mean is noise)."""
    import matplotlib.pyplot as plt

    m, n, labels = signed_error_cells(metrics)
    if not labels:
        return None
    lim = max(1.0, float(np.nanmax(np.abs(m))))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.2))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    few = np.isfinite(m) & (n < FEW_FACES)
    ax.imshow(np.where(few[..., None], (1.0, 1.0, 1.0, 0.65), 0.0), aspect="auto")  # washed out
    ax.set_xticks(range(len(AGE_BINS)), [b for b, _, _ in AGE_BINS])
    ax.set_yticks(range(len(labels)), labels)
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            ax.text(j, i, f"{v:+.1f}\n{n[i, j]}", ha="center", va="center", fontsize=7, linespacing=0.9,
                    color="0.45" if few[i, j] else "black")
    fig.colorbar(im, ax=ax, label="mean signed error, years (red: over-estimated)")
    ax.set_title(f"Signed error per group and age bin (below: faces; pale: under {FEW_FACES})")
    return _png(fig)


def standardised_table(metrics: dict) -> str:
    """HTML table of the age-standardised MAE per group with CIs and each attribute's spread."""
    std = metrics.get("standardised")
    if not std:
        return ""
    ci = lambda v: f" [{v[0]:.2f}, {v[1]:.2f}]" if v else ""  # noqa: E731
    rows = []
    for attr in ("gender", "race", "gender×race"):
        a = std.get(attr)
        if not a:
            continue
        out = a.get("left_out_of_spread") or []
        why = a.get("left_out_reasons") or {g: f"under {a.get('min_n')} faces" for g in out}  # older metrics.json
        for g, v in a["by_group"].items():
            value = "n/a" if v["mae"] is None else f"{v['mae']:.3f}{ci(v['ci95'])}"
            lacks = v.get("missing_bins", []) + list(v.get("thin_bins", {}))
            # a group kept in the spread though it lacks a light bin: its value is re-weighted over the bins it has
            note = ("left out of the spread" if g in out else
                    f"re-weighted without {', '.join(lacks)}" if lacks else "")
            rows.append(f"<tr><td>{html.escape(attr)}</td><td>{html.escape(g)}</td><td>{html.escape(str(v['n']))}</td>"
                        f"<td>{value}</td><td>{html.escape(note)}</td></tr>")
        named = "; ".join(f"{html.escape(g)}: {html.escape(why.get(g, ''))}" for g in out)
        left = f" (without {named})" if out else ""
        if a.get("spread") is not None:
            rows.append(f"<tr><td>{html.escape(attr)}</td><td><b>spread (max − min)</b>{left}</td><td></td>"
                        f"<td><b>{a['spread']:.3f}{ci(a.get('spread_ci95'))}</b></td><td></td></tr>")
        else:
            rows.append(f"<tr><td>{html.escape(attr)}</td><td><b>spread (max − min)</b>{left}</td><td></td>"
                        f"<td>n/a: {html.escape(a.get('note') or 'fewer than two groups large enough')}</td>"
                        "<td></td></tr>")
    return ("<h2>Age-standardised MAE (equal error at equal age)</h2><p>Each group's per-age-bin MAE weighted by "
            "the whole test's age-bin shares, so groups with different age mixes are compared at equal age; "
            "seeded bootstrap 95 % intervals per group; the spread's interval holds every pairwise difference at once. "
            "A group's age bin of under " + str(std.get("min_cell", 1)) + " faces counts as missing.</p><table><tr>"
            "<th>attribute</th><th>group</th><th>n</th><th>standardised MAE [95 % CI]</th><th>note</th></tr>"
            + "".join(rows) + "</table>")


def _fmt_ci(ci: dict | None, key: str) -> str:
    v = (ci or {}).get(key)
    return f" [{v[0]:.2f}, {v[1]:.2f}]" if v else ""


def run_config_file(metrics: dict, run: Path | None) -> Path | None:
    """The config.yaml of the run folder evaluated (the folder given, or the model_path evaluate recorded: a run
    folder or a checkpoint in one), or None (a shipped model or loose weights carry no training recipe)."""
    cands = [run] if run is not None else []
    spec = metrics.get("model_path") or metrics.get("run")
    if spec:
        cands += [Path(spec).parent] if Path(spec).name in ("best.pt", "last.pt") else [Path(spec)]
    return next((c / "config.yaml" for c in cands if (c / "config.yaml").is_file()), None)


def _join(keys: list[str]) -> str:
    return " × ".join(keys)


def recipe_line(path: Path) -> str:
    """Which components of the fairness recipe the run trained with, from its config.yaml ("" if unreadable)."""
    import yaml

    from ..config import config_from_dict

    try:
        cfg = config_from_dict(yaml.safe_load(path.read_text()) or {})
    except Exception:  # a config of another version only removes the line
        return ""
    t, f = cfg.train, cfg.fairness

    def on(flag: bool, detail: str = "") -> str:
        return ("on" + (f" ({detail})" if detail else "")) if flag else "off"

    tail = f", tail augmentation {t.tail_augment:g}" if t.tail_augment else ""
    parts = [f"balanced sampler {on(t.sampler == 'balanced', f'by {_join(t.balance_by)}, power {t.balance_power:g}{tail}')}",
             f"class-balanced loss {on(f.cb_beta > 0, f'β {f.cb_beta:g} by {_join(f.cb_by)}, λ {f.lambda_cb:g}')}",
             f"LDS {on(f.lds, f'σ {f.lds_sigma:g}')}",
             f"KNN loss {on(f.gamma_knn > 0, f'γ {f.gamma_knn:g}, k {f.knn_k}')}",
             f"region attention {on(cfg.model.region_attention)}",
             f"group DRO {on(f.group_dro, f'by {_join(f.dro_by)}, η {f.dro_eta:g}')}"]
    return "Training recipe (" + str(path) + "): " + "; ".join(parts) + "."


def _load_model_and_cache(metrics: dict, run: Path | None):
    """(model, config, cache) for the face panels, or None with the reason."""
    from ..data.cache import FaceCache
    from ..models.weights import resolve_model

    spec = str(run) if run is not None else metrics.get("run") or metrics.get("model_path")
    if not spec and metrics.get("model"):  # `agelens evaluate` end to end: its aligned faces were temporary
        return None, (f"these metrics come from `agelens evaluate` end to end (model {metrics['model']}), which keeps "
                      "no aligned faces to draw; `agelens evaluate --from-cache` or `agelens report RUN` keep them")
    if not spec:
        return None, "no model recorded with these metrics"
    try:
        model, cfg, _ = resolve_model(spec)
    except Exception as e:  # any unreadable model only removes the panel
        return None, f"model {spec} not loadable ({e})"
    cache_p = metrics.get("cache") or str(Path(cfg.data.cache_dir) / "test")
    try:
        cache = FaceCache(cache_p)
    except DataError as e:
        return None, str(e)
    return (model, cfg, cache), None


def build_report(path: str | Path, output: str | Path | None = None, samples: int = 6, log=print) -> Path:
    """Write OUTPUT/report.html (default: PATH/report/) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    eval_dir, run = locate(path)
    try:
        metrics = json.loads((eval_dir / "metrics.json").read_text())
    except ValueError as e:
        raise DataError(f"{eval_dir / 'metrics.json'} is not valid JSON ({e}): evaluate again to rewrite it") from None
    pr = read_predictions(eval_dir)
    sections: list[tuple[str, str | None, str]] = []
    sections.append(("Error by age", plot_error_by_age(pr["age"], pr["pred"]), ""))
    sections.append(("Per-group MAE", plot_groups(metrics), "Whiskers: seeded bootstrap 95 % intervals (ci95); none for a group of under "
                     f"{MIN_N} faces." if metrics.get("ci95") else
                     "No ci95 in metrics.json (evaluated with --bootstrap 0, or by an older version): no whiskers."))
    sections.append(("Confusion over age bins", plot_confusion(pr["age"], pr["pred"]), ""))
    signed = plot_signed_error(metrics)
    if signed:
        sections.append(("Signed error per group and age bin", signed, "Mean of (predicted − true) age; red: "
                         "the model over-estimates that group at that age, blue: under-estimates."))
    emb = eval_dir / "embeddings.npz"
    if emb.is_file():
        sections.append(("t-SNE of embeddings", plot_tsne(emb), ""))
    else:
        sections.append(("t-SNE of embeddings", None, "No embeddings.npz: evaluate with --save-embeddings."))
    loaded, why = _load_model_and_cache(metrics, run)
    if loaded is not None:
        model, cfg, cache = loaded
        png, weights, info = plot_faces(model, cfg, cache, samples,  # KNN refines after the model: not shown here
                                        "model alone (before KNN)" if metrics.get("knn") else "predicted")
        sections.append(("Grad-CAM and face-region attention", png, faces_note(info, cfg.data.input_size, weights)))
    else:
        sections.append(("Grad-CAM and face-region attention", None, f"Skipped: {why}."))
    ci = metrics.get("ci95")
    summary = "".join(f"<tr><td>{html.escape(k)}</td><td>{fmt(metrics[k])}{_fmt_ci(ci, k)}</td></tr>"
                      for k in ("mae", "cmae", "bias_score", "acc5") if k in metrics)
    groups = metrics.get("groups", {})
    gtab = "".join(f"<tr><td>{html.escape(a)}</td><td>{fmt(g['difference']['mae'])}</td><td>{fmt(g['ratio']['mae'])}</td>"
                   f"<td>{len(g['by_group']) - len(g.get('left_out_of_difference') or [])}</td>"
                   f"<td>{html.escape(_left_out(g))}</td></tr>" for a, g in groups.items())
    knn = metrics.get("knn")
    conf = run_config_file(metrics, run)
    recipe = recipe_line(conf) if conf is not None else ""
    small = metrics.get("small_bins") or {}
    failed = metrics.get("failed") or 0
    n = html.escape(str(metrics.get("n")))  # a received metrics.json is shown as text, never run as the page's HTML
    parts = [f"<h1>agelens fairness report</h1><p>{html.escape(str(eval_dir))} — n = {n}"
             + (f" ({html.escape(str(failed))} more image{'' if failed == 1 else 's'} with no face found, not counted)"
                if failed else "")
             + (f", KNN refinement k={html.escape(str(knn['k']))}, w={html.escape(str(knn['w']))}" if knn else "")
             + "</p>",
             f"<p>{html.escape(recipe)}</p>" if recipe else "",
             f"<table><tr><th>metric</th><th>value [95 % CI]</th></tr>{summary}</table>",
             "<p>CMAE and the bias score (max − min MAE over age bins) take every age bin present"
             + (": " + ", ".join(f"{html.escape(b)} holds only {html.escape(str(c))} face{'' if c == 1 else 's'}"
                                 for b, c in small.items()) + ", so they read a few faces' errors" if small else "")
             + (f"; the age_bin row of the group gaps below leaves out bins of under {MIN_N} faces"
                if "age_bin" in groups else "") + ".</p>"]
    if gtab:
        parts.append("<h2>Group gaps (fairlearn MetricFrame)</h2><table><tr><th>attribute</th><th>MAE difference "
                     "(max−min)</th><th>MAE ratio (min/max)</th><th>groups compared</th><th>left out (faces)</th></tr>"
                     f"{gtab}</table>")
    parts.append(standardised_table(metrics))
    for title, png, note in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if png:
            parts.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{png}">')
        if note:
            parts.append(f"<p>{html.escape(note)}</p>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>agelens fairness report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    out = Path(output) if output else Path(path) / "report"
    atomic_write_text(out / "report.html", page)
    log(f"wrote {out / 'report.html'} ({sum(1 for _, p, _ in sections if p)} plots)")
    return out / "report.html"
