"""Train throughput: the engine's chosen path vs a plain fp32 NCHW eager loop, side by side in one run.

usage: python benchmarks/train_throughput.py [--backbone resnet34] [--size 224] [--batch 32] [--steps 5]
Prints the CPU's relevant flags, the numerics the engine chose (and its probe), then img/s for both loops and the
ratio. Same model, optimiser, batch and data (synthetic uint8 faces) for both; one warm-up step each.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from agelens.config import load_config
from agelens.models import build_model
from agelens.numerics import BF16_FLAGS, choose_numerics, cpu_flags, cpu_model
from agelens.train.engine import train_step


def plain_loop(model, images, ages, steps):
    """What a straightforward script does: fp32, NCHW, eager."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    mean = torch.tensor(model.mean_std[0]).view(1, 3, 1, 1)
    std = torch.tensor(model.mean_std[1]).view(1, 3, 1, 1)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        x = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
        x = x.contiguous()
        loss = model.head.loss(model(x), ages)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return len(images) * len(times) / sum(times)


def engine_loop(model, numerics, images, ages, steps):
    if numerics.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        train_step(model, model.head, opt, scaler, numerics, images, ages)
        if i:
            times.append(time.perf_counter() - t)
    return len(images) * len(times) / sum(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet34")
    ap.add_argument("--head", default="dldl")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    flags = cpu_flags()
    print(f"cpu: {cpu_model()}  threads: {torch.get_num_threads()}  torch {torch.__version__}")
    print("flags: " + ", ".join(f"{f}={'yes' if f in flags else 'no'}" for f in (*BF16_FLAGS, "avx512f", "avx2", "amx_tile")))
    cfg = load_config(None, [f"model.backbone={a.backbone}", f"model.head={a.head}", "model.pretrained=false"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    numerics = choose_numerics(cfg.train, model, lambda m, x, y: m.head.loss(m(x), y), a.size)
    print(f"engine chose: {numerics.dtype}, channels_last={numerics.channels_last}  ({numerics.reason})")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (a.batch, a.size, a.size, 3), dtype=torch.uint8, generator=g)
    ages = torch.randint(1, 90, (a.batch,), generator=g).float()
    plain = plain_loop(copy.deepcopy(model).train(), images, ages, a.steps)
    engine = engine_loop(copy.deepcopy(model).train(), numerics, images, ages, a.steps)
    print(f"{a.backbone} @ {a.size}px, batch {a.batch}, {a.steps} timed steps each")
    print(f"plain fp32 NCHW eager : {plain:8.2f} img/s")
    print(f"engine ({numerics.dtype}{'+channels_last' if numerics.channels_last else ''}): {engine:8.2f} img/s")
    print(f"ratio engine/plain    : {engine / plain:8.2f}x")


if __name__ == "__main__":
    main()
