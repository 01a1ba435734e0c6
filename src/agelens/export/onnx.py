"""ONNX export of the shipped models with preprocessing and flip-TTA inside the graph, and int8 quantisation.

Graph contract (every exported model): input ``image`` uint8 NHWC (batch, S, S, 3), RGB, S = the model's input
size, the centre view of an aligned face (`agelens.data.views.centre_crop`); outputs ``age`` and ``spread`` float32
(batch,). For the occlusion detector ``age`` is the occlusion probability. Metadata (ONNX metadata_props) carries
name, kind, crop_size, input_size, min_age, max_age, threshold and the source weights' SHA-256, so the runtime
needs nothing but onnxruntime and numpy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import AgelensError, CheckpointError
from ..utils import (
    INT8_FLAVORS,
    SHIPPED,
    atomic_write,
    atomic_write_json,
    role_fits,
    sha256_file,
    staging_dir,
    weights_dir,
)

OPSET = 17


class _StaticSameConv(nn.Conv2d):
    """A TF-'same' convolution (timm's Conv2dSame) whose padding was fixed for one input size."""

    pad_arg: tuple[int, int, int, int]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(nn.functional.pad(x, self.pad_arg), self.weight, self.bias, self.stride,
                                    (0, 0), self.dilation, self.groups)


def static_same_padding(model: nn.Module, size: int) -> int:
    """Fix timm's dynamic 'same' padding for an input of size×size (in place); returns how many convs changed.

    Conv2dSame computes its padding from the input's shape at run time, which the exported graph does with Shape,
    arithmetic and Pad nodes: 20 % of the teacher's onnxruntime time (AMD EPYC, one thread). With a constant
    padding onnxruntime folds the Pad into the Conv; the numbers do not change."""
    from timm.layers import Conv2dSame
    from timm.layers.padding import pad_same_arg

    convs = [m for m in model.modules() if isinstance(m, Conv2dSame)]
    sizes: dict[int, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: sizes.__setitem__(id(m), tuple(a[0].shape[-2:])))
             for m in convs]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    for m in convs:
        m.__class__ = _StaticSameConv
        m.pad_arg = tuple(pad_same_arg(sizes[id(m)], m.weight.shape[-2:], m.stride, m.dilation))
    return len(convs)


def fuse_pads(model, feed: dict[str, np.ndarray]) -> int:
    """Fold zero-constant Pad nodes into the Conv they feed (in place; ONNX Conv takes asymmetric pads, which
    onnxruntime does not fold itself); returns how many. `feed` is any valid input, run once to read the pads."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}

    def foldable(n) -> bool:
        users = consumers.get(n.output[0], [])
        mode = next((a.s for a in n.attribute if a.name == "mode"), b"constant")
        return (n.op_type == "Pad" and mode == b"constant" and len(users) == 1 and users[0].op_type == "Conv"
                and (len(n.input) < 3 or not n.input[2]) and n.output[0] not in outputs
                and not any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in users[0].attribute))

    pads = [n for n in model.graph.node if foldable(n)]
    if not pads:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n.input[1], onnx.TensorProto.INT64, None) for n in pads)
    values = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [n.input[1] for n in pads], feed)
    fused = 0
    for n, v in zip(pads, values, strict=True):
        v = [int(x) for x in v]
        if len(v) != 8 or any(v[k] for k in (0, 1, 4, 5)) or min(v) < 0:  # batch/channel padding, or a crop
            continue
        conv = consumers[n.output[0]][0]
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        new = [old[0] + v[2], old[1] + v[3], old[2] + v[6], old[3] + v[7]]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend([*kept, helper.make_attribute("pads", new)])
        conv.input[0] = n.input[0]
        model.graph.node.remove(n)
        fused += 1
    _prune(model)
    return fused


def _prune(model) -> None:
    """Drop nodes whose outputs nothing reads (the constant subgraphs that computed the folded pads)."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            model.graph.node.remove(n)


class ExportGraph(nn.Module):
    """uint8 NHWC → normalise → model → decode (→ mean with the mirrored face when tta)."""

    def __init__(self, model: nn.Module, tta: bool, guards: bool = True) -> None:
        super().__init__()
        self.model, self.tta = model.eval(), tta
        self.guards = guards and getattr(model, "guards", None) is not None
        mean, std = model.mean_std
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std
        if self.guards:  # one pass: age, spread, occlusion and face probability
            age, spread, probs = self.model.predict_guards(x, self.tta)
            return age, spread, probs[:, 0], probs[:, 1]
        age, spread, _ = self.model.predict(x, self.tta)  # the embedding branch is pruned from the graph
        return age, spread


def model_kind(cfg) -> str:
    """"age", or "occlusion" for any binary crop classifier (the kinds of `utils.role_fits`)."""
    return "occlusion" if cfg.model.head == "binary" else "age"


def check_roles(models: dict[str, str]) -> None:
    """AgelensError naming the first model that cannot serve its role (`utils.role_fits`), before any is exported."""
    from ..models.weights import resolve_model

    for role, src in models.items():
        cfg = resolve_model(src)[1]
        kind, task = model_kind(cfg), cfg.train.task
        if not role_fits(role, kind, task):
            raise AgelensError(f"{src} cannot be the {role}: it is " + ("an age model" if kind == "age" else
                               f"a binary crop classifier of {task!r}")
                               + (" (the occlusion detector is a binary classifier trained on train.task occlusion)"
                                  if role == "occlusion" else ""))


def export_model(name_or_path: str, out_path: str | Path, tta: bool | None = None, guards: bool = True,
                 fold_padding: bool = True) -> dict:
    """Export one model (shipped name, .safetensors, .pt or run folder) to ONNX fp32; returns its metadata.
    guards=False leaves a model's guard heads out of the graph (age and spread only); fold_padding=False keeps
    timm's run-time 'same' padding (the graphs before export format v2, for benchmarks/inference.py)."""
    import onnx

    from ..models.weights import resolve_model
    from ..occlusion.detector import card_threshold

    model, cfg, card = resolve_model(name_or_path)
    kind = model_kind(cfg)
    tta = (kind == "age") if tta is None else tta
    with_guards = guards and getattr(model, "guards", None) is not None
    src = weights_dir() / f"{name_or_path}.safetensors"
    src = src if src.is_file() else Path(name_or_path)
    meta = {"name": str(card.get("name", name_or_path)), "kind": kind, "task": cfg.train.task,
            "crop_size": cfg.data.crop_size,
            "input_size": cfg.data.input_size, "min_age": cfg.model.min_age, "max_age": cfg.model.max_age,
            "threshold": card_threshold(card, name_or_path) if kind == "occlusion" else None, "tta": tta,
            "interval_z": card.get("interval_z") if kind == "age" else None,
            "tta_spread": card.get("tta_spread") if kind == "age" else None,
            "age_prior": card.get("age_prior") if kind == "age" else None,
            "guard_thresholds": card.get("guard_thresholds") if with_guards else None,
            "guard_cascade": card.get("guard_cascade") if with_guards else None,
            "source_sha256": sha256_file(src) if src.is_file() else None, "opset": OPSET}
    s = cfg.data.input_size
    model.float().eval()
    if fold_padding:
        static_same_padding(model, s)
    graph = ExportGraph(model, tta, with_guards).eval()
    dummy = torch.zeros(2, s, s, 3, dtype=torch.uint8)
    outputs = ["age", "spread"] + (["occlusion", "face"] if with_guards else [])

    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # the exporter's note that Slice nodes with a step other than 1 are not constant-folded: harmless, and
            # only noise on the user's first run
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(graph, (dummy,), str(tmp), input_names=["image"], output_names=outputs,
                              dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                              opset_version=OPSET, dynamo=False)
        m = onnx.load(str(tmp))
        if fold_padding:
            fuse_pads(m, {"image": dummy.numpy()})
        onnx.checker.check_model(m)
        for k, v in meta.items():
            m.metadata_props.add(key=k, value=json.dumps(v))
        onnx.save(m, str(tmp))

    atomic_write(Path(out_path), write)
    return meta


class _CropReader:
    """onnxruntime CalibrationDataReader over uint8 NHWC views."""

    def __init__(self, views: np.ndarray, batch: int = 16) -> None:
        self.batches = iter([{"image": views[i:i + batch]} for i in range(0, len(views), batch)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def calibration_views(cache, crop_size: int, input_size: int, n: int = 300, seed: int = 0) -> np.ndarray:
    """n random faces of a prepared cache (a FaceCache or its folder, e.g. cache/utkface/val), as the model's uint8
    centre views."""
    from ..data.cache import FaceCache
    from ..data.views import centre_views

    cache = cache if isinstance(cache, FaceCache) else FaceCache(cache)
    idx = np.sort(np.random.default_rng(seed).choice(len(cache), min(n, len(cache)), replace=False))
    return centre_views((cache.images[i] for i in idx), crop_size, input_size)


STATIC_INT8 = "static-qdq-u8s8-percentile-conv-clip-add-first3-last-fp32"  # the recipe quantize_int8 applies
# Conv nodes left in fp32 at the graph's start: the stem and EfficientNet-Lite's first block (depthwise + projection).
# `python benchmarks/int8_layers.py` (docs/int8_layers.json; the teacher's single view, 1,200 cached validation faces
# of both datasets, one thread, batches of 8, AVX-512 VNNI): the stem alone 0.42 years mean change from fp32, 2.41 ms
# per face; + block 1 0.31 years, 2.34 ms (where fp32 says 10-20: +0.27 → +0.17); + block 2's expansion 0.29 years
# but 2.80 ms; the first 6 0.28 years, 2.64 ms. fp32: 4.65 ms.
INT8_FP32_FIRST = 3


def quantize_int8(fp32_path: str | Path, out_path: str | Path, views: np.ndarray | None,
                  ranges: str | Path | None = None, fp32_first: int = INT8_FP32_FIRST, reduce_range: bool = False,
                  depthwise_8bit: bool = True) -> str:
    """Static QDQ int8 calibrated on `views` (their activation ranges also saved to `ranges` when given), static
    from saved `ranges` without views (the shipped `<graph>.int8-ranges.json`: no face data needed), or, with
    neither, dynamic int8 (weights only). Returns the method.

    Static recipe: Conv with its Clip (ReLU6) and the residual Add quantised together, uint8 activations, int8
    per-channel weights, percentile ranges, the first `fp32_first` Conv (the stem and the first block) and the last
    left in fp32. On the shipped teacher's single-view graph, against fp32 (`benchmarks/int8_layers.py`, 1,200 cached
    validation faces of both datasets): mean age change 0.31 years (0.42 with the stem alone in fp32), 2.0x faster
    per face on a CPU with AVX-512 VNNI. Quantising Conv alone (its output range is the pre-ReLU6 one) had moved ages
    by 2.5 / 3.1 years, and int8 activations gained no speed there. reduce_range: 7-bit weights (the "int8w7"
    flavour, for CPUs without VNNI: `INT8_FLAVORS`) in every Conv but the depthwise ones, which keep 8-bit weights
    (static recipe; `_depthwise_weights_from`; depthwise_8bit=False: 7-bit there too, as before 2026-12-07)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    ranges = Path(ranges) if ranges is not None else None
    # this process's own scratch copy: processes quantising the same graph at once (first runs in parallel) each
    # had the same `.pre.onnx` beside the output, and read one another's half-written or deleted file
    scratch = Path(tempfile.mkdtemp(prefix="agelens-quant-"))
    pre = scratch / (out_path.stem + ".pre.onnx")
    # ranges measured afresh go to a side file first and replace `ranges` only once the graph is written: a run cut
    # short leaves the old ranges in place (onnxruntime would read an existing cache file instead of measuring)
    fresh = views is not None and ranges is not None
    cache = ranges.with_name(ranges.name + ".new") if fresh else ranges
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
        convs = [n.name for n in graph.node if n.op_type == "Conv"]
        keep_fp32 = [c for c in (convs[:fp32_first] + convs[-1:]) if c] if len(convs) > fp32_first else []
        if views is None and ranges is not None:
            _check_ranges(ranges, {t for n in graph.node for t in (*n.input, *n.output)})
        elif fresh:
            cache.unlink(missing_ok=True)

        def write(tmp: Path) -> None:
            if views is None and ranges is None:
                # per-tensor: onnxruntime's CPU kernels refuse per-channel zero points in MatMulIntegerToFloat
                # (every image failed with "b zero point is not valid")
                quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, per_channel=False,
                                 reduce_range=reduce_range)
            else:  # measured on our teacher: MinMax ranges collapse accuracy (MAE 3.4 → 10.8), percentile holds
                def static(dst: Path, reader, seven_bit: bool) -> None:
                    quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                                    op_types_to_quantize=["Conv", "Clip", "Add"], nodes_to_exclude=keep_fp32,
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    calibrate_method=CalibrationMethod.Percentile, reduce_range=seven_bit,
                                    calibration_cache_path=str(cache) if cache is not None else None)

                def reader():
                    return _CropReader(views, _calib_batch(len(views))) if views is not None else None

                static(tmp, reader(), reduce_range)
                if reduce_range and depthwise_8bit:  # the 8-bit copy: ranges from `cache`, else measured again
                    eight = scratch / "w8.onnx"
                    static(eight, None if cache is not None else reader(), False)
                    _depthwise_weights_from(eight, tmp)
            _copy_metadata(fp32_path, tmp)
            _runs(tmp)

        atomic_write(out_path, write)
        if fresh:
            os.replace(cache, ranges)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if fresh:
            cache.unlink(missing_ok=True)
    w7 = "-w7" if reduce_range else ""
    if views is None:
        return f"dynamic{w7}" if ranges is None else f"{STATIC_INT8}{w7} (saved ranges)"
    return STATIC_INT8 + w7


def _depthwise_weights_from(donor: Path, graph: Path) -> None:
    """Give `graph`'s depthwise Conv nodes (group > 1) the quantised weights and biases of the same nodes in `donor`
    (the same graph quantised with 8-bit weights), in place.

    Why (the "int8w7" flavour, AVX2 without VNNI): onnxruntime's u8s8 GEMM there (`vpmaddubsw`) adds each pair of
    uint8 x int8 products in int16 and saturates, hence 7-bit weights; its depthwise kernel (MLAS
    `MlasConvDepthwiseKernelAvx2`) widens both operands to int16 first and cannot saturate, so 8-bit weights are
    safe there and halve their rounding error. The teacher's single view, 599 validation photos' aligned crops,
    mean |age - fp32| (`benchmarks/int8_w7_depthwise.py`): 7-bit everywhere 0.627 years, 8-bit everywhere
    (saturating) 0.576, this 0.490; `docs/inference_levers.md`."""
    import onnx

    g, d = onnx.load(str(graph)), onnx.load(str(donor))
    donor_init = {i.name: i for i in d.graph.initializer}
    made_by = {o: n for n in g.graph.node for o in n.output}
    names: set[str] = set()
    for n in g.graph.node:
        if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute):
            for inp in n.input[1:]:  # weight and bias, each behind its DequantizeLinear
                dq = made_by.get(inp)
                if dq is not None and dq.op_type == "DequantizeLinear":
                    names.update(dq.input)
    for init in g.graph.initializer:
        if init.name in names and init.name in donor_init:
            init.CopyFrom(donor_init[init.name])
    onnx.save(g, str(graph))


def _runs(path: Path) -> None:
    """CheckpointError unless onnxruntime runs the graph at `path` on one blank view (a graph written must answer)."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        size = int(json.loads(sess.get_modelmeta().custom_metadata_map["input_size"]))
        sess.run(None, {"image": np.zeros((1, size, size, 3), np.uint8)})
    except Exception as e:  # onnxruntime raises its own exception types
        raise CheckpointError(f"the int8 graph made from {path.name} does not run: {str(e).splitlines()[0]}") from None


def _check_ranges(path: Path, tensors: set[str]) -> None:
    """Saved activation ranges must name this graph's tensors (tensor names come from the torch exporter: another
    torch version may name them differently)."""
    try:
        names = set(json.loads(path.read_text())["data"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"int8 ranges {path} cannot be read: {e}") from e
    missing = names - tensors
    if not names or missing:
        raise CheckpointError(f"int8 ranges {path} do not match this export ({len(missing)} of {len(names)} tensors "
                              f"not in the graph, e.g. {sorted(missing)[:2]}); quantise with calibration faces "
                              "instead (`agelens export onnx --calibration CACHE`)")


def _once(log):
    """`log` that says each line once."""
    said: set[str] = set()

    def say(msg: str) -> None:
        if msg not in said:
            said.add(msg)
            log(msg)
    return say


def _ranges_fit(ranges: Path, src: str, log) -> bool:
    """Shipped ranges exist and were calibrated on these weights: the card's `int8_ranges.weights_sha256` names
    the weights file they were measured with (new weights need new ranges, not stale ones)."""
    weights = weights_dir() / f"{src}.safetensors"
    if not ranges.is_file() or not weights.is_file():
        log(f"{ranges.name.removesuffix('.int8-ranges.json')}: no int8 copy (no int8 ranges are shipped for {src}; "
            "`agelens export onnx --int8 static --calibration CACHE_DIR` measures them)")
        return False
    card = weights.with_suffix(".json")
    made_for = json.loads(card.read_text()).get("int8_ranges", {}).get("weights_sha256") if card.is_file() else None
    if made_for != sha256_file(weights):
        log(f"{ranges.name}: calibrated for other weights than {weights.name}; no int8 copy (recalibrate: "
            "`python benchmarks/int8_ranges.py`)")
        return False
    return True


def _calib_batch(n: int) -> int:
    """A batch size dividing n (the percentile calibrator needs equal batches)."""
    return next(b for b in (20, 16, 10, 8, 5, 4, 2, 1) if n % b == 0)


def _copy_metadata(src: Path, dst: Path) -> None:
    import onnx

    s, d = onnx.load(str(src)), onnx.load(str(dst))
    del d.metadata_props[:]
    for p in s.metadata_props:
        d.metadata_props.add(key=p.key, value=p.value)
    onnx.save(d, str(dst))


def export_all(out_dir: str | Path, models: dict[str, str] | None = None, int8: str = "static",
               calibration: str | Path | None = None, n_calib: int = 64, log=print,
               flavors: tuple[str, ...] = tuple(INT8_FLAVORS), also=None, replace: bool = True) -> dict:
    """Export teacher, student and occlusion detector (or `models`: role → name/path) into out_dir as
    <role>.onnx (age models also <role>.notta.onnx, without flip-TTA) and manifest.json, with int8 copies of
    each graph (<graph>.<flavor>.onnx for each of `flavors`, `INT8_FLAVORS`: the CPU that runs them picks one).
    int8: "static" calibrates on `calibration` (a face cache) and saves each
    graph's activation ranges as <graph>.int8-ranges.json; "shipped" quantises from the ranges shipped beside the
    weights (graphs without matching ranges stay fp32 only, logged); "dynamic" weights only; "none". Each role's
    model must fit it (`utils.role_fits`). The folder is written whole or not at all: made beside out_dir, then
    swapped in (an earlier export there replaced; replace=False keeps one that another process made meanwhile);
    also(folder), when given, writes more files into it first (the CLI's cat / non-face check)."""
    if int8 not in ("static", "shipped", "dynamic", "none"):
        raise AgelensError(f"int8 must be static, shipped, dynamic or none, got {int8!r}")
    if int8 == "static" and calibration is None:
        raise AgelensError("static int8 needs --calibration CACHE_DIR (a prepared face cache); "
                           "or use --int8 dynamic / none")
    from ..models.weights import shipped_models

    final = Path(out_dir)
    if final.exists() and not final.is_dir():
        raise AgelensError(f"{final} is a file, not a folder for the export")
    if final.is_dir() and any(final.iterdir()) and not (final / "manifest.json").is_file():
        raise AgelensError(f"{final} holds other files (and no manifest.json of an earlier export, which would be "
                           "replaced): give a new or empty folder")
    models = models or {r: r for r in SHIPPED if r in shipped_models()}
    check_roles(models)  # every role before the first export (before: a wrong detector, after the age models' minute)
    # the whole export is made in a staging folder beside it and swapped in at the end: an export cut short leaves
    # the earlier one as it was, and no graph of an earlier export (an int8 copy) outlives it
    out = staging_dir(final, "export-")
    log = _once(log)  # a note about a graph's missing ranges is the same for each int8 flavour: said once
    try:
        manifest = _export_into(out, models, int8, calibration, n_calib, log, flavors)
        if also is not None:
            also(out)
        _swap_in(out, final, replace)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return manifest


def _swap_in(stage: Path, final: Path, replace: bool) -> None:
    """`stage` becomes `final`: an earlier folder there is moved aside, then removed (replace=False: an export that
    appeared there meanwhile, another process's, is kept and `stage` dropped)."""
    if final.exists() and (final / "manifest.json").is_file() and not replace:
        return
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(stage, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _export_into(out: Path, models: dict[str, str], int8: str, calibration, n_calib: int, log,
                 flavors: tuple[str, ...]) -> dict:
    """`export_all`'s graphs and manifest written into the folder `out`."""
    if int8 == "static":  # opened (and checksummed) once; views drawn once per (crop, input) size
        from ..data.cache import FaceCache

        calib_cache, calib_views = FaceCache(calibration), {}
    manifest: dict = {"opset": OPSET, "input": "image uint8 NHWC (centre view)", "models": {}}
    for role, src in models.items():
        p = out / f"{role}.onnx"
        meta = export_model(src, p)
        entry = {"fp32": p.name, **meta}
        log(f"{role}: {p.name} ({p.stat().st_size / 1e6:.1f} MB)")
        if meta["kind"] == "age" and meta["tta"]:  # the single-view graph `--no-tta` runs (half the work)
            entry["fp32_single_view"] = (out / f"{role}.notta.onnx").name
            export_model(src, out / entry["fp32_single_view"], tta=False)
        views = None
        if int8 == "static":
            key = (meta["crop_size"], meta["input_size"])
            if key not in calib_views:
                calib_views[key] = calibration_views(calib_cache, *key, n_calib)
            views = calib_views[key]
        if int8 != "none":
            calibrated = False  # static: the first flavour calibrates and saves the ranges, the others read them
            for flavor in flavors:
                if role not in INT8_FLAVORS[flavor][1]:
                    _int8_copies(out, src, entry, int8, None if calibrated else views, log, flavor)
                    calibrated = views is not None
                entry[f"{flavor}_tried"] = True
        manifest["models"][role] = entry
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _int8_copies(out: Path, src: str, entry: dict, int8: str, views, log, flavor: str = "int8") -> None:
    """<graph>.<flavor>.onnx beside each fp32 graph of one model (its manifest `entry`: "fp32", and
    "fp32_single_view" for age models), recorded in `entry` as "<flavor>" / "<flavor>_single_view"; int8 as in
    `export_all`, flavor one of `INT8_FLAVORS` (the activation ranges are the same for each; the caller leaves
    out the roles a flavour keeps in fp32)."""
    graphs = {"": entry["fp32"], "_single_view": entry.get("fp32_single_view")}
    for suffix, g in ((k, out / v) for k, v in graphs.items() if v):
        stem = g.name.removesuffix(".onnx")
        q = out / f"{stem}.{flavor}.onnx"
        ranges = {"static": out / f"{stem}.int8-ranges.json", "shipped": weights_dir() /
                  f"{stem}.int8-ranges.json"}.get(int8)
        if int8 == "shipped" and not _ranges_fit(ranges, src, log):
            continue
        try:
            method = quantize_int8(g, q, views, ranges, reduce_range=INT8_FLAVORS[flavor][0])
        except CheckpointError as e:  # shipped ranges made by another torch exporter: fp32 only
            if int8 != "shipped":
                raise
            log(f"{stem}: no int8 copy ({e})")
            continue
        entry[f"{flavor}{suffix}"], entry[f"{flavor}_method"] = q.name, method
        log(f"{stem}: {q.name} ({q.stat().st_size / 1e6:.1f} MB, {method})")


def add_shipped_int8(out_dir: str | Path, log=print, flavor: str = "int8") -> dict:
    """int8 copies of one flavour (`INT8_FLAVORS`), quantised from the ranges shipped beside the weights, for an
    export of the shipped models that has none yet (`ensure_export` makes fp32 graphs only: int8 is asked for by
    `--backend onnx-int8`). Roles whose copies exist, or were tried, are left alone; the manifest is rewritten
    atomically."""
    if flavor not in INT8_FLAVORS:
        raise AgelensError(f"int8 flavour must be one of {sorted(INT8_FLAVORS)}, got {flavor!r}")
    out = Path(out_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    for role, entry in manifest["models"].items():
        if entry.get(f"{flavor}_tried") or flavor in entry:
            continue
        if role not in INT8_FLAVORS[flavor][1]:
            _int8_copies(out, role, entry, "shipped", None, log, flavor)
        entry[f"{flavor}_tried"] = True
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def export_crop_net(net: nn.Module, out: str | Path, size: int, output: str) -> None:
    """A small crop network (uint8 NHWC `crops` of size×size in, `output` out, the batch dynamic) to ONNX, written
    atomically: the orientation classifier and the realignment network."""

    def write(tmp: str) -> None:
        torch.onnx.export(net, torch.zeros(1, size, size, 3, dtype=torch.uint8), tmp, input_names=["crops"],
                          output_names=[output], dynamic_axes={"crops": {0: "n"}, output: {0: "n"}},
                          opset_version=17, dynamo=False)

    atomic_write(out, write)
