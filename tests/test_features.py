"""Cached vision features are exactly what the VLM computes from pixels, and are computed once."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from backbone_swap.training.features import FeatureCache, expand_to_square, preprocess


def _images(folder):
    folder.mkdir()
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        path = folder / f"{i}.png"
        Image.new("RGB", (40 + 10 * i, 30), colour).save(path)
        paths.append(path)
    return paths


def test_projected_cached_features_equal_the_models_image_features(kit, transplanted, tmp_path):
    model_dir = transplanted["mistral"]
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    images = _images(tmp_path / "img")
    cache = FeatureCache(tmp_path / "cache", model_dir, processor.image_processor, image_aspect="pad",
                         layer=model.config.vision_feature_layer, strategy=model.config.vision_feature_select_strategy)
    assert cache.fill(model.model.vision_tower, images, batch_size=2, device="cpu") == 3
    assert cache.fill(model.model.vision_tower, images, batch_size=2, device="cpu") == 0
    pixels = preprocess([Image.open(p).convert("RGB") for p in images], processor.image_processor, "pad")
    with torch.no_grad():
        reference = model.get_image_features(pixel_values=pixels, vision_feature_layer=-2,
                                             vision_feature_select_strategy="default").pooler_output
        for path, expected in zip(images, reference, strict=True):
            projected = model.model.multi_modal_projector(cache.load(path))
            torch.testing.assert_close(projected, expected, rtol=1e-5, atol=1e-6)


def test_the_same_tower_shares_a_cache_and_preprocessing_changes_the_key(kit, transplanted, tmp_path):
    processor = AutoProcessor.from_pretrained(kit.vlm)
    keys = {
        name: FeatureCache(tmp_path, path, processor.image_processor, image_aspect="pad", layer=-2,
                           strategy="default", dtype="float32").folder  # the recipe's precision, as in train
        for name, path in [("old", kit.vlm), *transplanted.items()]
    }
    assert len(set(keys.values())) == 1  # old and both new VLMs carry the same tower: one cache
    other = FeatureCache(tmp_path, kit.vlm, processor.image_processor, image_aspect="resize", layer=-2,
                         strategy="default").folder
    assert other != keys["old"]


def test_padding_to_square_keeps_the_whole_image():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    square = expand_to_square(image, (1, 2, 3))
    assert square.size == (40, 40)
    assert square.getpixel((0, 0)) == (1, 2, 3) and square.getpixel((20, 20)) == (255, 0, 0)


def test_another_process_filling_the_same_cache_does_not_collide(transplanted, tmp_path):
    model_dir = transplanted["mistral"]
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    images = _images(tmp_path / "img")
    cache = FeatureCache(tmp_path / "cache", model_dir, processor.image_processor, image_aspect="pad",
                         layer=model.config.vision_feature_layer, strategy=model.config.vision_feature_select_strategy)
    cache.folder.mkdir(parents=True)
    for image in images:  # what a second training writing the same features at this moment holds open
        target = cache.path_for(image)
        (target.parent / f".{target.name}.tmp").mkdir()
    assert cache.fill(model.model.vision_tower, images, batch_size=2, device="cpu") == 3
    assert all(cache.load(image).shape[0] > 0 for image in images)
    assert sorted(p.name for p in cache.folder.iterdir() if not p.name.startswith(".")) == sorted(
        cache.path_for(image).name for image in images)


def test_the_cache_takes_the_disk_its_estimate_says(kit, transplanted, tmp_path):
    from backbone_swap.checkpoints.anatomy import read_anatomy
    from backbone_swap.checkpoints.folder import open_checkpoint
    from backbone_swap.training.features import bytes_per_image

    model_dir = transplanted["mistral"]
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    cache = FeatureCache(tmp_path / "cache", model_dir, processor.image_processor, image_aspect="pad", layer=-2,
                         strategy="default")
    images = _images(tmp_path / "img")
    cache.fill(model.model.vision_tower, images, batch_size=3, device="cpu")
    vision = read_anatomy(open_checkpoint(model_dir)).vision
    estimate = bytes_per_image(vision.image_tokens, vision.feature_dim, "float32")
    for image in images:
        on_disk = cache.path_for(image).stat().st_size
        assert estimate - 128 < on_disk <= estimate  # the features' bytes, and a header of under 128
        assert cache.load(image).numel() * 4 == estimate - 128


def test_a_cache_in_another_precision_is_another_cache(transplanted, tmp_path):
    model_dir = transplanted["mistral"]
    processor = AutoProcessor.from_pretrained(model_dir)
    full, half = (FeatureCache(tmp_path, model_dir, processor.image_processor, image_aspect="pad", layer=-2,
                               strategy="default", dtype=dtype) for dtype in ("float32", "bfloat16"))
    assert full.folder != half.folder
    bf16 = transplanted["qwen2"]  # a bfloat16 checkpoint with the same tower: the tower's dtype decides the key
    keys = {dtype: FeatureCache(tmp_path, bf16, processor.image_processor, image_aspect="pad", layer=-2,
                                strategy="default", dtype=dtype).folder for dtype in (None, "bfloat16", "float32")}
    assert keys[None] == keys["bfloat16"] == half.folder and keys["float32"] == full.folder
    tower = LlavaForConditionalGeneration.from_pretrained(model_dir).model.vision_tower  # float32
    with pytest.raises(ValueError, match="holds bfloat16 features"):
        half.fill(tower, _images(tmp_path / "img"), batch_size=3, device="cpu")
    tower = tower.to(torch.bfloat16)
    assert half.fill(tower, [tmp_path / "img" / "0.png"], batch_size=1, device="cpu") == 1
    assert half.load(tmp_path / "img" / "0.png").dtype == torch.bfloat16


def test_a_cache_from_before_the_key_named_the_dtype_is_taken_over_when_its_dtype_matches(transplanted, tmp_path):
    from backbone_swap.training.features import _key

    model_dir = transplanted["mistral"]  # float32
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    options = dict(image_aspect="pad", layer=-2, strategy="default")
    images = _images(tmp_path / "img")
    cache = FeatureCache(tmp_path / "cache", model_dir, processor.image_processor, **options)
    assert cache.fill(model.model.vision_tower, images, batch_size=3, device="cpu") == 3
    fields = {"processor": json.loads(processor.image_processor.to_json_string()), "aspect": "pad", "layer": -2,
              "strategy": "default"}
    legacy = cache.folder.parent / _key(fields)  # the folder the cache had before
    cache.folder.rename(legacy)
    half = FeatureCache(tmp_path / "cache", model_dir, processor.image_processor, dtype="bfloat16", **options)
    assert legacy.is_dir() and not half.folder.exists()  # float32 features are not bfloat16 ones
    again = FeatureCache(tmp_path / "cache", model_dir, processor.image_processor, **options)
    assert again.folder == cache.folder and not legacy.exists()
    assert again.fill(model.model.vision_tower, images, batch_size=3, device="cpu") == 0  # nothing computed again


@pytest.mark.parametrize("layout", ["transformers 5", "earlier transformers"])
def test_the_tower_is_loaded_alone_with_the_weights_of_the_whole_model(transplanted, tmp_path, layout):
    import shutil

    from accelerate import Accelerator
    from safetensors.torch import load_file, save_file

    from backbone_swap.training.model import load_vision_tower

    model_dir = transplanted["mistral"]
    if layout == "earlier transformers":  # the key names of llava-hf's releases (transformers 4)
        earlier = tmp_path / "earlier"
        shutil.copytree(model_dir, earlier)
        renames = (("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."),
                   ("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."))
        tensors = load_file(model_dir / "model.safetensors")
        renamed = {}
        for name, tensor in tensors.items():
            for old, new in renames:
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
            renamed[name] = tensor
        assert set(renamed) != set(tensors)
        save_file(renamed, earlier / "model.safetensors", metadata={"format": "pt"})
        model_dir = earlier
    tower = load_vision_tower(model_dir, "bf16", Accelerator(cpu=True))
    whole = LlavaForConditionalGeneration.from_pretrained(transplanted["mistral"], dtype=torch.bfloat16)
    expected = whole.model.vision_tower.state_dict()
    loaded = tower.state_dict()
    assert type(tower) is type(whole.model.vision_tower) and loaded.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name
    assert all(p.dtype == torch.bfloat16 for p in tower.parameters()) and not tower.training
