"""The frozen vision tower's features, computed once per image and kept on disk.

The vision tower never trains in the recipe, so its output for an image is a pure function of (tower
weights, preprocessing, feature layer and strategy, image bytes). Caching it under that key means both
stages, every epoch and every backbone trained on the same data reuse one forward pass per image: the
tower is the same for the old and the new VLM by construction of the transplant.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backbone_swap.checkpoints import streaming as st
from backbone_swap.checkpoints.folder import open_checkpoint
from backbone_swap.checkpoints.formats import component_of
from backbone_swap.errors import BackboneSwapError
from backbone_swap.runs import write_safetensors


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "backbone-swap" / "features"


def tower_fingerprint(model_dir: Path) -> str:
    """sha256 of the vision tower's tensors (names, dtypes, shapes and bytes) in a LLaVA checkpoint."""
    ckpt = open_checkpoint(model_dir)
    h = hashlib.sha256()
    for name in sorted(ckpt.weights.names()):
        if component_of(name, "vlm") != "vision_tower":
            continue
        h.update(f"{name.split('vision_tower.', 1)[1]}|{ckpt.weights.dtype(name)}|{ckpt.weights.shape(name)}".encode())
        entry = ckpt.weights.entries.get(name)
        h.update(st.read_bytes(entry) if entry else st.tensor_to_bytes(ckpt.weights.read_tensor(name)))
    return h.hexdigest()


def expand_to_square(image, fill: tuple[int, int, int]):
    """LLaVA-1.5's padding: the image centred on a square of the mean colour, so nothing is cropped."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def pad_to_square(image, image_processor):
    """Pad with the mean colour of the image processor's normalisation (LLaVA-1.5's choice)."""
    mean = getattr(image_processor, "image_mean", None) or [0.5, 0.5, 0.5]
    return expand_to_square(image, tuple(int(round(m * 255)) for m in mean))


def preprocess(images: Sequence[Any], image_processor, image_aspect: str):
    """Pixel values for a list of PIL images, padded to square first when the recipe says so."""
    if image_aspect == "pad":
        images = [pad_to_square(im, image_processor) for im in images]
    return image_processor(images=list(images), return_tensors="pt")["pixel_values"]


def select_features(hidden_states: Sequence[Any], layer: int | list[int], strategy: str):
    """The features LLaVA feeds its projector: the chosen layer(s), CLS dropped for the default strategy."""
    import torch

    layers = [layer] if isinstance(layer, int) else list(layer)
    chosen = [hidden_states[i] for i in layers]
    if strategy == "default":
        chosen = [h[:, 1:] for h in chosen]
    return chosen[0] if len(chosen) == 1 else torch.cat(chosen, dim=-1)


def _config_dtype(model_dir: Path) -> str:
    """The dtype ``from_pretrained`` gives a checkpoint by default in transformers 5: its config's."""
    config = open_checkpoint(model_dir).config
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def bytes_per_image(image_tokens: int, feature_dim: int, dtype: str) -> int:
    """Disk one image's cached features take: its feature matrix and the safetensors header."""
    return image_tokens * feature_dim * st.DTYPE_SIZES[st.safetensors_dtype(dtype)] + 128


def _key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _adopt(legacy: Path, folder: Path, dtype: str) -> None:
    """Take over a cache from before the key named the dtype (features computed in the checkpoint's configured
    dtype), when its features are in ``dtype``: hours of tower passes at LLaVA's scale."""
    if folder.exists() or not legacy.is_dir():
        return
    sample = next(legacy.glob("*.safetensors"), None)
    if sample is None:
        return
    try:
        if st.read_header(sample)[0]["features"].dtype == st.safetensors_dtype(dtype):
            os.rename(legacy, folder)
    except (OSError, KeyError, BackboneSwapError):  # unreadable, or another process adopted it first
        return


class FeatureCache:
    """Vision features by image, stored as one safetensors file per image under a key folder."""

    def __init__(self, root: Path, model_dir: Path, image_processor, *, image_aspect: str,
                 layer: int | list[int], strategy: str, dtype: str | None = None) -> None:
        """``dtype``: the tower's precision, which changes its features (default: the checkpoint's configured one,
        which ``from_pretrained`` gives)."""
        fields = {"processor": json.loads(image_processor.to_json_string()), "aspect": image_aspect,
                  "layer": layer, "strategy": strategy}
        dtype = dtype or _config_dtype(model_dir)
        tower = Path(root) / tower_fingerprint(model_dir)[:16]
        self.folder = tower / _key({**fields, "dtype": dtype})
        self.image_processor = image_processor
        self.image_aspect, self.layer, self.strategy, self.dtype = image_aspect, layer, strategy, dtype
        self._digests: dict[Path, str] = {}
        _adopt(tower / _key(fields), self.folder, dtype)

    def path_for(self, image: Path) -> Path:
        if image not in self._digests:
            self._digests[image] = st.sha256_file(image)
        return self.folder / f"{self._digests[image]}.safetensors"

    def missing(self, images: Sequence[Path]) -> list[Path]:
        seen, out = set(), []
        for image in images:
            target = self.path_for(image)
            if target not in seen and not target.is_file():
                out.append(image)
            seen.add(target)
        return out

    def fill(self, vision_tower, images: Sequence[Path], *, batch_size: int, device: Any,
             on_batch: Callable[[int], None] | None = None) -> int:
        """Compute and store the features of the images not cached yet; returns how many were computed."""
        import torch

        from backbone_swap.training.data import open_image

        todo = self.missing(images)
        self.folder.mkdir(parents=True, exist_ok=True)
        dtype = next(vision_tower.parameters()).dtype
        if str(dtype).removeprefix("torch.") != self.dtype:
            raise ValueError(f"this cache holds {self.dtype} features, and the tower given computes in {dtype}")
        for i in range(0, len(todo), batch_size):
            chunk = todo[i: i + batch_size]
            pixels = preprocess([open_image(p) for p in chunk], self.image_processor, self.image_aspect)
            with torch.no_grad():
                out = vision_tower(pixels.to(device=device, dtype=dtype), output_hidden_states=True)
                feats = select_features(out.hidden_states, self.layer, self.strategy)
            for path, feat in zip(chunk, feats, strict=True):
                # written under a temporary name of this call's own: trainings sharing the cache may fill it at once
                write_safetensors(self.path_for(path), {"features": feat.detach().to("cpu").contiguous()})
            if on_batch:
                on_batch(len(chunk))
        return len(todo)

    def load(self, image: Path):
        from safetensors.torch import load_file

        return load_file(self.path_for(image))["features"]


class TowerFeatures:
    """The frozen tower run on every training batch instead of reading the cache.

    For data sets whose features would not fit on disk (a CLIP-L/336 tower gives 576 x 1024 values per
    image: about 1.2 MB in bfloat16), at the price of the tower's forward pass at every step. Same
    preprocessing and feature selection as the cache, so both give the same numbers.
    """

    def __init__(self, vision_tower, image_processor, *, image_aspect: str, layer: int | list[int], strategy: str,
                 device: Any) -> None:
        self.tower, self.image_processor, self.device = vision_tower, image_processor, device
        self.image_aspect, self.layer, self.strategy = image_aspect, layer, strategy
        self.dtype = next(vision_tower.parameters()).dtype

    def batch(self, images: Sequence[Path]):
        """Features of several images in one forward pass (what the trainer's collate calls)."""
        import torch

        from backbone_swap.training.data import open_image

        pixels = preprocess([open_image(p) for p in images], self.image_processor, self.image_aspect)
        with torch.no_grad():
            out = self.tower(pixels.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
            return select_features(out.hidden_states, self.layer, self.strategy)

    def __call__(self, image: Path):
        return self.batch([image])[0]
