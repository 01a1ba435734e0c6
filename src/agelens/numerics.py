"""Choose device, dtype and memory format per machine at start-up, log why, allow forcing any of them."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .utils import cpu_flags, cpu_model  # noqa: F401  (re-exported: they lived here)

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass
class Numerics:
    device: str
    dtype: str  # fp32 | bf16 | fp16
    channels_last: bool
    reason: str
    cpu: str = ""
    cpu_bf16_flags: list[str] = field(default_factory=list)
    probe: dict[str, float] = field(default_factory=dict)  # img/s per candidate when measured

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype)

    def autocast(self) -> torch.autocast:
        dt = self.autocast_dtype
        return torch.autocast(self.device_type, dtype=dt or torch.float32, enabled=dt is not None)

    @property
    def device_type(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, reason: str) -> Numerics:
        """The numerics an `as_dict` recorded (a checkpoint's, a run's env.json), with a new reason."""
        return cls(d["device"], d["dtype"], bool(d["channels_last"]), reason)


def _probe_step(model: nn.Module, loss_fn, dtype: torch.dtype | None, channels_last: bool, batch: int, size: int,
                steps: int) -> float:
    m = copy.deepcopy(model).train()
    x = torch.randn(batch, 3, size, size)
    y = torch.rand(batch) * 80
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(m, x, y)
        loss.backward()
        m.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
    return batch / min(times)


def choose_numerics(train_cfg, model: nn.Module | None = None, loss_fn=None, input_size: int = 224,
                    probe_batch: int = 16, probe_steps: int = 2) -> Numerics:
    """auto: CUDA → AMP (bf16 if supported, else fp16) + channels_last. CPU → fp32 unless the CPU has native
    bf16 (AMX or AVX512-BF16) *and* a short probe on this model measures bf16 faster; channels_last likewise
    kept only when measured faster. Forced values (train.numerics / train.channels_last / train.device) win."""
    want_dev = train_cfg.device
    if want_dev == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("train.device=cuda but no CUDA device is available")
    dev = "cuda" if (want_dev == "cuda" or (want_dev == "auto" and torch.cuda.is_available())) else "cpu"
    flags = cpu_flags()
    bf16_flags = sorted(f for f in BF16_FLAGS if f in flags)
    cpu = cpu_model()
    forced_cl = {"on": True, "off": False}.get(train_cfg.channels_last)
    if dev == "cuda":
        dtype = train_cfg.numerics if train_cfg.numerics != "auto" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
        return Numerics("cuda", dtype, True if forced_cl is None else forced_cl, "CUDA: AMP + channels_last",
                        torch.cuda.get_device_name(0), bf16_flags)
    if train_cfg.numerics == "fp16":
        from .errors import ConfigError

        raise ConfigError("train.numerics=fp16 is only supported on CUDA; use fp32 or bf16 on CPU")
    if train_cfg.numerics != "auto" and forced_cl is not None:
        return Numerics("cpu", train_cfg.numerics, forced_cl, "forced by config", cpu, bf16_flags)
    dtypes = [train_cfg.numerics] if train_cfg.numerics != "auto" else (["fp32", "bf16"] if bf16_flags else ["fp32"])
    layouts = [forced_cl] if forced_cl is not None else [False, True]
    if model is None or loss_fn is None or (len(dtypes) == 1 and len(layouts) == 1):
        reason = "no native bf16 on this CPU (no AMX/AVX512-BF16): fp32" if not bf16_flags else "not probed"
        return Numerics("cpu", dtypes[0], layouts[0] if layouts[0] is not None else True, reason, cpu, bf16_flags)
    probe: dict[str, float] = {}
    for dt in dtypes:
        for cl in layouts:
            key = f"{dt}{'+channels_last' if cl else ''}"
            probe[key] = round(_probe_step(model, loss_fn, torch.bfloat16 if dt == "bf16" else None, cl, probe_batch,
                                           input_size, probe_steps), 2)
    best = max(probe, key=probe.get)
    dtype = "bf16" if best.startswith("bf16") else "fp32"
    why = (f"probe at {input_size}px, batch {probe_batch}: " + ", ".join(f"{k} {v} img/s" for k, v in probe.items())
           + f"; native bf16 flags: {bf16_flags or 'none'}")
    return Numerics("cpu", dtype, best.endswith("channels_last"), why, cpu, bf16_flags, probe)
