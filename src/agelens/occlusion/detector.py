"""The occlusion detector: a binary CNN (AgeModel with the `binary` head) on the same aligned crop as the age
model; its threshold is chosen on validation (evaluate/detector.py) and shipped in the weights card."""

from __future__ import annotations

import numpy as np
import torch

from ..data.views import centre_views
from ..models import AgeModel
from ..models.inputs import to_input
from ..numerics import Numerics


def card_threshold(card: dict, name_or_path: str | None = None) -> float:
    """The decision threshold a detector's weights card records (top level, else its test metrics); for a run folder
    or checkpoint (no card: `name_or_path`) the one its test chose (RUN/test/metrics.json); else 0.5."""
    if "threshold" not in card and card.get("source") == "checkpoint" and name_or_path:
        import json
        from pathlib import Path

        p = Path(name_or_path)
        try:  # before: 0.5, whatever the run's validation had chosen
            return float(json.loads(((p if p.is_dir() else p.parent) / "test" / "metrics.json").read_text())
                         ["threshold"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return float(card.get("threshold", (card.get("test_metrics") or {}).get("threshold", 0.5)))


class OcclusionDetector:
    """Inference wrapper: aligned cache-size crops → occlusion probability and verdict."""

    def __init__(self, model: AgeModel, crop_size: int, input_size: int, threshold: float, name: str = "occlusion",
                 numerics: Numerics | None = None) -> None:
        self.model = model.eval()
        self.crop_size, self.input_size, self.threshold, self.name = crop_size, input_size, threshold, name
        self.numerics = numerics or Numerics("cpu", "fp32", True, "inference default: fp32 + channels_last")
        self.model.to(self.numerics.device)
        if self.numerics.channels_last:
            self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_pretrained(cls, name_or_path: str = "occlusion", device: str = "cpu",
                        task: str | None = None) -> OcclusionDetector:
        """A binary crop classifier with its card's threshold (a run folder's or checkpoint's: the one its test
        chose), on `device`: the occlusion detector, or another binary model such as the face verifier `faceness`.
        task: the training task it must have been trained for ("occlusion" where it will flag occluded faces)."""
        from ..errors import CheckpointError
        from ..models.weights import resolve_model

        model, cfg, card = resolve_model(name_or_path)
        if cfg.model.head != "binary":
            raise CheckpointError(f"{name_or_path} is not an occlusion detector (head {cfg.model.head!r})")
        if task is not None and cfg.train.task != task:  # e.g. the face verifier flagged every face occluded
            raise CheckpointError(f"{name_or_path} is not an occlusion detector: a binary classifier trained for "
                                  f"train.task {cfg.train.task!r} (the face verifier is one)")
        numerics = Numerics(device, "fp32", True, f"inference default on {device}: fp32 + channels_last")
        return cls(model, cfg.data.crop_size, cfg.data.input_size, card_threshold(card, name_or_path),
                   str(card.get("name", name_or_path)), numerics)

    @torch.no_grad()
    def scores(self, crops: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """Probability per aligned crop, batch_size crops per forward pass."""
        if len(crops) == 0:
            return np.zeros(0, np.float32)
        out = []
        for i in range(0, len(crops), batch_size):
            views = torch.from_numpy(centre_views(crops[i:i + batch_size], self.crop_size, self.input_size))
            x = to_input(views, *self.model.mean_std, self.numerics.device, self.numerics.channels_last)
            with self.numerics.autocast():
                p, _, _ = self.model.predict(x, tta_flip=False)
            out.append(p.float().cpu().numpy())
        return np.concatenate(out)
