"""A TFLite graph of plain convolutional ops (mediapipe's short-range BlazeFace) as a trainable torch module.

The flatbuffer is read with the `tflite` package (schema bindings; in the dev and test extras): each operator
becomes one step of `TFLiteNet.forward`, in the graph's order, its constant tensors (fp16 in mediapipe's files,
dequantised) torch parameters. Tensors run NCHW; TFLite's NHWC semantics are kept where they show (channel padding,
the reshapes of the SSD heads, TensorFlow's asymmetric 'SAME' padding). Supported ops: CONV_2D, DEPTHWISE_CONV_2D,
ADD, RELU, PAD, MAX_POOL_2D, RESHAPE, CONCATENATION, DEQUANTIZE: enough for the short-range detector, checked
against LiteRT's outputs by `tests/test_face_detector_training.py`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_SAME = 0  # tflite.Padding.SAME
_ACT_NONE, _ACT_RELU, _ACT_RELU6 = 0, 1, 3


def _tf_same(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow's 'SAME' padding: the extra pixel of an odd total goes to the bottom and the right."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)) if ph or pw else x


def _act(x: torch.Tensor, code: int) -> torch.Tensor:
    if code == _ACT_NONE:
        return x
    if code == _ACT_RELU:
        return F.relu(x)
    if code == _ACT_RELU6:
        return F.relu6(x)
    raise ValueError(f"fused activation {code} is not supported")


class TFLiteNet(nn.Module):
    """The graph of `path` (one subgraph, one input, NHWC float) as a torch module: forward takes NCHW float input
    and returns the graph's outputs in order."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        import tflite

        buf = Path(path).read_bytes()
        model = tflite.Model.GetRootAsModel(buf, 0)
        g = model.Subgraphs(0)
        names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

        def const(i: int) -> np.ndarray | None:
            t = g.Tensors(i)
            data = model.Buffers(t.Buffer()).DataAsNumpy()
            if isinstance(data, int) or data is None or len(data) == 0:
                return None
            dtype = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
                     tflite.TensorType.INT32: np.int32, tflite.TensorType.INT64: np.int64}[t.Type()]
            return np.frombuffer(data.tobytes(), dtype).reshape(t.ShapeAsNumpy())

        self.inputs, self.outputs = [int(i) for i in g.InputsAsNumpy()], [int(i) for i in g.OutputsAsNumpy()]
        if len(self.inputs) != 1:
            raise ValueError(f"{path}: one input expected, got {len(self.inputs)}")
        consts: dict[int, np.ndarray] = {}
        self.steps: list[tuple] = []
        self.params = nn.ParameterDict()
        for k in range(g.OperatorsLength()):
            op = g.Operators(k)
            name = names[model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()]
            ins, outs = [int(i) for i in op.InputsAsNumpy()], [int(i) for i in op.OutputsAsNumpy()]
            opts = op.BuiltinOptions()
            if name == "DEQUANTIZE":
                consts[outs[0]] = const(ins[0]).astype(np.float32)
                continue
            for i in ins:
                if i >= 0 and i not in consts and (c := const(i)) is not None:
                    consts[i] = c.astype(np.float32) if c.dtype == np.float16 else c
            if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                o = tflite.Conv2DOptions() if name == "CONV_2D" else tflite.DepthwiseConv2DOptions()
                o.Init(opts.Bytes, opts.Pos)
                if o.StrideH() != o.StrideW() or o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
                    raise ValueError(f"{path}: op {k}: only square strides without dilation")
                w = consts[ins[1]]  # conv (O, kh, kw, I); depthwise (1, kh, kw, C)
                w = w.transpose(0, 3, 1, 2) if name == "CONV_2D" else w.transpose(3, 0, 1, 2)
                self.params[f"w{k}"] = nn.Parameter(torch.from_numpy(np.ascontiguousarray(w)))
                self.params[f"b{k}"] = nn.Parameter(torch.from_numpy(consts[ins[2]].copy()))
                self.steps.append(("conv", k, ins[0], outs[0], o.StrideH(), o.Padding() == _SAME,
                                   o.FusedActivationFunction(), name == "DEPTHWISE_CONV_2D"))
            elif name == "ADD":
                o = tflite.AddOptions()
                o.Init(opts.Bytes, opts.Pos)
                self.steps.append(("add", k, ins[0], ins[1], outs[0], o.FusedActivationFunction()))
            elif name == "RELU":
                self.steps.append(("relu", k, ins[0], outs[0]))
            elif name == "PAD":
                p = consts[ins[1]]  # NHWC [[n0, n1], [t, b], [l, r], [c0, c1]]
                self.steps.append(("pad", k, ins[0], outs[0], (int(p[2, 0]), int(p[2, 1]), int(p[1, 0]),
                                                                int(p[1, 1]), int(p[3, 0]), int(p[3, 1]))))
            elif name == "MAX_POOL_2D":
                o = tflite.Pool2DOptions()
                o.Init(opts.Bytes, opts.Pos)
                self.steps.append(("maxpool", k, ins[0], outs[0], o.FilterHeight(), o.StrideH(),
                                   o.Padding() == _SAME))
            elif name == "RESHAPE":
                shape = tuple(int(v) for v in g.Tensors(outs[0]).ShapeAsNumpy())
                self.steps.append(("reshape", k, ins[0], outs[0], shape[1:]))
            elif name == "CONCATENATION":
                o = tflite.ConcatenationOptions()
                o.Init(opts.Bytes, opts.Pos)
                rank = len(g.Tensors(outs[0]).ShapeAsNumpy())
                self.steps.append(("concat", k, tuple(ins), outs[0], o.Axis() % rank))
            else:
                raise ValueError(f"{path}: op {k} {name} is not supported")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        t: dict[int, torch.Tensor] = {self.inputs[0]: x}
        nchw: dict[int, bool] = {self.inputs[0]: True}
        for s in self.steps:
            kind = s[0]
            if kind == "conv":
                _, k, i, o, stride, same, act, depthwise = s
                w, b = self.params[f"w{k}"], self.params[f"b{k}"]
                y = _tf_same(t[i], w.shape[-1], stride) if same else t[i]
                y = F.conv2d(y, w, b, stride, groups=w.shape[0] if depthwise else 1)
                t[o], nchw[o] = _act(y, act), True
            elif kind == "add":
                _, k, a, b, o, act = s
                t[o], nchw[o] = _act(t[a] + t[b], act), nchw[a]
            elif kind == "relu":
                _, k, i, o = s
                t[o], nchw[o] = F.relu(t[i]), nchw[i]
            elif kind == "pad":
                _, k, i, o, (left, right, top, bottom, c0, c1) = s
                y = F.pad(t[i], (left, right, top, bottom))
                if c0 or c1:
                    y = F.pad(y.transpose(1, 3), (c0, c1)).transpose(1, 3)
                t[o], nchw[o] = y, True
            elif kind == "maxpool":
                _, k, i, o, size, stride, same = s
                y = _tf_same(t[i], size, stride) if same else t[i]
                t[o], nchw[o] = F.max_pool2d(y, size, stride), True
            elif kind == "reshape":
                _, k, i, o, shape = s
                y = t[i].permute(0, 2, 3, 1) if nchw[i] and t[i].dim() == 4 else t[i]
                t[o], nchw[o] = y.reshape(y.shape[0], *shape), False
            elif kind == "concat":
                _, k, ins, o, axis = s
                t[o], nchw[o] = torch.cat([t[i] for i in ins], axis), False
        return [t[o] for o in self.outputs]
