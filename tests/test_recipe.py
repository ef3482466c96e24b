"""Recipes: every shipped one validates, values are what LLaVA-1.5 says, bad input names its key, hashes are honest."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from backbone_swap.errors import BackboneSwapError
from backbone_swap.training.recipe import (
    LoraSettings,
    Stage,
    apply_overrides,
    load_recipe,
    recipe_from_dict,
    recipe_hash,
    recipe_to_dict,
    shipped_recipes,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_FILES = sorted((ROOT / "recipes").glob("*.yaml"))


def _tiny() -> dict[str, Any]:
    return recipe_to_dict(load_recipe("tiny-cpu"))


def _write(tmp_path: Path, data: Any, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every setting, a null lora counted as one setting."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_leaves(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _reversed(value: Any) -> Any:
    """The same data with every mapping's key order reversed."""
    if isinstance(value, dict):
        return {k: _reversed(value[k]) for k in reversed(list(value))}
    return value


# ---------------------------------------------------------------------------------------------- shipped


def test_shipped_files_are_the_packaged_recipes():
    assert SHIPPED_FILES, "no recipes/*.yaml found"
    assert shipped_recipes() == [p.stem for p in SHIPPED_FILES]


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_round_trips(path: Path):
    recipe = load_recipe(path)
    assert load_recipe(path.stem) == recipe == load_recipe(path.name)
    assert recipe.name == path.stem
    assert recipe.description
    assert 1 <= len(recipe.stages) <= 2
    for stage in recipe.stages:
        assert stage.accumulation(1) >= 1
    assert recipe_from_dict(recipe_to_dict(recipe), path.name) == recipe
    # Self-documenting: the header says how to run and override it.
    header = path.read_text().split("\n\n")[0]
    assert f"--recipe {path.stem}" in path.read_text() and "--set" in path.read_text() and header.startswith("#")


def test_llava15_values_follow_the_paper():
    data = recipe_to_dict(load_recipe("llava15-lora"))
    del data["description"]
    common = {"epochs": 1.0, "max_steps": None, "warmup_ratio": 0.03, "scheduler": "cosine", "weight_decay": 0.0,
              "max_grad_norm": 1.0, "micro_batch": 16, "train_projector": True}
    assert data == {
        "name": "llava15-lora", "seed": 42, "max_length": 2048, "precision": "bf16", "gradient_checkpointing": True,
        "image_aspect": "pad", "group_by_length": True,
        "stages": {
            "stage1": {**common, "lora": None, "lr": 1e-3, "projector_lr": None, "global_batch": 256},
            "stage2": {**common, "lr": 2e-4, "projector_lr": 2e-5, "global_batch": 128,
                       "lora": {"r": 128, "alpha": 256, "dropout": 0.05, "bias": "none", "targets": "family"}},
        },
    }


def test_tiny_cpu_is_the_same_structure_for_cpus():
    recipe = load_recipe("tiny-cpu")
    assert (recipe.precision, recipe.gradient_checkpointing, recipe.seed) == ("fp32", False, 0)
    assert [s.name for s in recipe.stages] == ["stage1", "stage2"]
    stage1, stage2 = recipe.stages
    assert stage1.train_projector and stage1.lora is None
    assert stage2.train_projector and stage2.lora is not None and stage2.lora.targets == "family"


# ---------------------------------------------------------------------------------------------- dict, hash


def test_dict_round_trip_normalises_numbers(tmp_path: Path):
    data = _tiny()
    data["stages"]["stage2"]["lr"] = "5e-3"  # what PyYAML makes of `lr: 5e-3`
    data["stages"]["stage2"]["epochs"] = 3  # an int is a fine float
    data["stages"]["stage2"]["lora"]["targets"] = ["q_proj", "v_proj"]
    recipe = recipe_from_dict(data, "x.yaml")
    assert recipe.stages[1].lr == 5e-3 and isinstance(recipe.stages[1].epochs, float)
    assert recipe.stages[1].lora == LoraSettings(r=8, alpha=16, dropout=0.0, bias="none", targets=("q_proj", "v_proj"))
    again = recipe_to_dict(recipe)
    assert recipe_from_dict(again, "x.yaml") == recipe
    assert recipe_to_dict(recipe_from_dict(again, "x.yaml")) == again
    assert load_recipe(_write(tmp_path, again)) == recipe


def test_yaml_floats_without_a_dot_are_strings_and_accepted(tmp_path: Path):
    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}  # YAML 1.1: the reason numeric strings are accepted
    data = _tiny()
    data["stages"]["stage2"]["lr"] = 0.005
    text = yaml.safe_dump(data).replace("lr: 0.005", "lr: 1e-3")
    assert "lr: 1e-3" in text
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert load_recipe(path).stages[1].lr == 1e-3


def test_defaults_for_optional_keys():
    data = _tiny()
    for stage in data["stages"].values():
        for key in ("max_steps", "projector_lr", "max_grad_norm", "lora"):
            stage.pop(key)
    data["stages"]["stage2"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0}
    del data["name"], data["description"]
    recipe = recipe_from_dict(data, "some/where/my-recipe.yaml")
    assert recipe.name == "my-recipe" and recipe.description == ""
    assert recipe.stages[1].lora == LoraSettings(r=4, alpha=8, dropout=0.0, bias="none", targets="family")
    assert recipe.stages[0].max_grad_norm is None and recipe.stages[0].projector_lr is None


def test_hash_ignores_key_order_name_and_description():
    data = _tiny()
    recipe = recipe_from_dict(data, "a.yaml")
    shuffled = recipe_from_dict(_reversed(data), "b.yaml")  # stage2 written before stage1 too
    assert [s.name for s in shuffled.stages] == ["stage1", "stage2"]
    assert shuffled == recipe and recipe_hash(shuffled) == recipe_hash(recipe)
    renamed = recipe_from_dict({**data, "name": "other", "description": "something else"}, "c.yaml")
    assert renamed != recipe and recipe_hash(renamed) == recipe_hash(recipe)
    settings = {k: v for k, v in recipe_to_dict(recipe).items() if k not in ("name", "description")}
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode("utf-8")
    assert recipe_hash(recipe) == hashlib.sha256(canonical).hexdigest()


def _other_value(key: str, value: Any, data: dict[str, Any]) -> Any:
    """A different valid value for the setting ``key``."""
    leaf = key.rsplit(".", 1)[-1]
    choices = {"precision": ["bf16", "fp32"], "image_aspect": ["pad", "resize"], "scheduler": ["cosine", "linear"],
               "bias": ["none", "all"]}
    if leaf in choices:
        return next(c for c in choices[leaf] if c != value)
    if leaf == "targets":
        return ["q_proj"]
    if leaf == "lora":  # a null lora becomes the other stage's (both stages must share one adapter)
        return copy.deepcopy(data["stages"]["stage2"]["lora"])
    if isinstance(value, bool):
        return not value
    if leaf == "global_batch":
        return value * 2
    if leaf == "micro_batch":
        return value // 2
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.1
    assert value is None, key
    return 5 if leaf == "max_steps" else 0.5


def test_hash_changes_with_every_setting():
    data = _tiny()
    base = recipe_hash(recipe_from_dict(data, "a.yaml"))
    settings = {k: v for k, v in _leaves(data).items() if k not in ("name", "description")}
    assert len(settings) > 25
    seen = {base}
    for key, value in settings.items():
        changed = copy.deepcopy(data)
        *path, leaf = key.split(".")
        parent = changed
        for part in path:
            parent = parent[part]
        parent[leaf] = _other_value(key, value, data)
        if key == "stages.stage1.train_projector":  # a stage must train something
            changed["stages"]["stage1"]["lora"] = copy.deepcopy(data["stages"]["stage2"]["lora"])
        digest = recipe_hash(recipe_from_dict(changed, "a.yaml"))
        assert digest not in seen, key
        seen.add(digest)


def test_hash_of_a_shipped_recipe_is_pinned():
    """Runs and comparisons keep the hash of the recipe they used: the same settings must keep their hash."""
    assert recipe_hash(load_recipe("llava15-lora")) == \
        "78caeeaf5789460067b1e720c702b6131e21cc96b2027b80047de0aed2bdf0d5"


# ---------------------------------------------------------------------------------------------- overrides


def test_overrides_set_values_in_both_spellings():
    recipe = load_recipe("llava15-lora")
    short = apply_overrides(recipe, ["stage2.lr=1e-4", "stage2.lora.r=64", "seed=3"])
    long = apply_overrides(recipe, ["stages.stage2.lr=1e-4", "stages.stage2.lora.r=64", "seed=3"])
    assert short == long
    assert short.seed == 3 and short.stages[1].lr == 1e-4 and short.stages[1].lora.r == 64
    assert short.stages[1].lora.alpha == 256 and short.stages[0] == recipe.stages[0]
    assert recipe.stages[1].lr == 2e-4  # the original is untouched
    assert recipe_hash(short) != recipe_hash(recipe)
    assert apply_overrides(recipe, []) == recipe


def test_overrides_read_values_as_yaml():
    recipe = load_recipe("tiny-cpu")
    out = apply_overrides(recipe, ["stage1.max_steps=1", "stage2.max_steps=2", "stage2.projector_lr=null",
                                   "stage2.lora.targets=[q_proj, v_proj]", "precision=bf16", "seed=1", "seed=2"])
    assert [s.max_steps for s in out.stages] == [1, 2]
    assert out.stages[1].projector_lr is None and out.stages[1].lora.targets == ("q_proj", "v_proj")
    assert out.precision == "bf16" and out.seed == 2  # later assignments win
    whole = apply_overrides(recipe, ["stage1.lora={r: 8, alpha: 16, dropout: 0.0}"])
    assert whole.stages[0].lora == whole.stages[1].lora


@pytest.mark.parametrize(("assignment", "key"), [
    ("stage2.lr", "stage2.lr"),  # no '='
    ("=3", "KEY=VALUE"),
    ("sed=3", "sed"),
    ("stage2.lrr=1e-4", "stages.stage2.lrr"),
    ("stages.stage2.lora.rank=4", "stages.stage2.lora.rank"),
    ("stage3.lr=1", "stages.stage3"),
    ("stage1.lora.r=4", "stages.stage1.lora"),  # stage1 has no lora to change a part of
    ("seed.x=1", "seed"),
    ("stage2.lr=-0.1", "stages.stage2.lr"),
    ("stage2.micro_batch=true", "stages.stage2.micro_batch"),
    ("stage2.lr=[1", "stage2.lr"),  # not YAML
])
def test_bad_overrides_name_the_key(assignment: str, key: str):
    with pytest.raises(BackboneSwapError) as caught:
        apply_overrides(load_recipe("tiny-cpu"), [assignment])
    assert key in str(caught.value)


# ---------------------------------------------------------------------------------------------- bad files


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    *path, leaf = key.split(".")
    for part in path:
        data = data[part]
    data[leaf] = value


def _drop(data: dict[str, Any], key: str) -> None:
    *path, leaf = key.split(".")
    for part in path:
        data = data[part]
    del data[leaf]


_DROP = object()

BAD_SETTINGS = [
    ("sed", 1, "sed"),
    ("stages.stage2.lrr", 1e-4, "stages.stage2.lrr"),
    ("stages.stage2.lora.rank", 4, "stages.stage2.lora.rank"),
    ("stages.stage3", {}, "stages.stage3"),
    ("max_length", "long", "max_length"),
    ("stages.stage2.lr", "fast", "stages.stage2.lr"),
    ("stages.stage2.lr", [1e-3], "stages.stage2.lr"),
    ("gradient_checkpointing", "yes please", "gradient_checkpointing"),
    ("stages.stage1.micro_batch", True, "stages.stage1.micro_batch"),
    ("seed", True, "seed"),
    ("stages.stage1.lr", False, "stages.stage1.lr"),
    ("stages.stage1.global_batch", 8.0, "stages.stage1.global_batch"),
    ("stages.stage2.lr", -0.1, "stages.stage2.lr"),
    ("stages.stage2.lr", "-1e-3", "stages.stage2.lr"),
    ("stages.stage2.lr", 0, "stages.stage2.lr"),
    ("stages.stage2.lr", float("nan"), "stages.stage2.lr"),
    ("stages.stage2.projector_lr", 0.0, "stages.stage2.projector_lr"),
    ("stages.stage2.scheduler", "cosin", "stages.stage2.scheduler"),
    ("precision", "bf32", "precision"),
    ("image_aspect", "crop", "image_aspect"),
    ("stages.stage2.lora.bias", "some", "stages.stage2.lora.bias"),
    ("stages.stage2.lora.targets", "q_proj", "stages.stage2.lora.targets"),
    ("stages.stage2.lora.targets", [], "stages.stage2.lora.targets"),
    ("stages.stage2.lora.targets", ["q_proj|lm_head"], "stages.stage2.lora.targets"),
    ("stages.stage2.lora.r", 0, "stages.stage2.lora.r"),
    ("stages.stage2.lora.dropout", 1.0, "stages.stage2.lora.dropout"),
    ("stages.stage1.global_batch", 10, "stages.stage1.global_batch"),  # micro_batch 8 does not divide it
    ("stages.stage1.warmup_ratio", 1.0, "stages.stage1.warmup_ratio"),
    ("stages.stage1.weight_decay", -0.1, "stages.stage1.weight_decay"),
    ("stages.stage1.epochs", 0, "stages.stage1.epochs"),
    ("stages.stage1.max_steps", 0, "stages.stage1.max_steps"),
    ("stages.stage1.max_grad_norm", 0, "stages.stage1.max_grad_norm"),
    ("stages.stage1.train_projector", False, "stages.stage1"),  # trains nothing
    ("stages.stage1.lora", {"r": 4, "alpha": 8, "dropout": 0.0}, "stages.stage2.lora"),  # two adapters
    ("stages.stage2.lr", _DROP, "stages.stage2.lr"),
    ("stages.stage2.lora.alpha", _DROP, "stages.stage2.lora.alpha"),
    ("seed", _DROP, "seed"),
    ("stages", {}, "stages"),
    ("stages", ["stage1"], "stages"),
    ("stages.stage2", 3, "stages.stage2"),
    ("name", "", "name"),
]


@pytest.mark.parametrize(("key", "value", "named"), BAD_SETTINGS, ids=[f"{k}={v!r}" for k, v, _ in BAD_SETTINGS])
def test_bad_settings_name_the_key_and_file(tmp_path: Path, key: str, value: Any, named: str):
    data = _tiny()
    if value is _DROP:
        _drop(data, key)
    else:
        _set(data, key, value)
    path = _write(tmp_path, data, "bad-recipe.yaml")
    with pytest.raises(BackboneSwapError) as caught:
        load_recipe(path)
    text = str(caught.value)
    assert named in caught.value.message and "bad-recipe.yaml" in caught.value.message, text
    assert caught.value.hint, text


def test_error_message_reads_as_one_sentence(tmp_path: Path):
    data = _tiny()
    data["stages"]["stage2"]["lr"] = -0.1
    with pytest.raises(BackboneSwapError) as caught:
        recipe_from_dict(data, "tiny-cpu.yaml")
    assert caught.value.message == "recipe tiny-cpu.yaml: stages.stage2.lr must be a positive number, not -0.1"


@pytest.mark.parametrize(("text", "expected"), [
    ("seed: 1\nstages: [oops\n", "not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
    ("just words\n", "must be a mapping"),
    ("", "is empty"),
    ("seed: 1\nseed: 2\n", "seed is given twice"),
])
def test_bad_yaml_names_the_file(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(BackboneSwapError) as caught:
        load_recipe(path)
    assert "broken.yaml" in str(caught.value) and expected in str(caught.value)


def test_duplicate_nested_key_is_named(tmp_path: Path):
    data = _tiny()
    data["stages"]["stage2"]["lr"] = 0.005
    text = yaml.safe_dump(data, sort_keys=False).replace("    lr: 0.005\n", "    lr: 0.005\n    lr: 0.5\n")
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(BackboneSwapError, match=r"stages\.stage2\.lr is given twice"):
        load_recipe(path)


def test_unknown_recipe_lists_the_shipped_ones(tmp_path: Path):
    for ref in ("llava16-lora", "nowhere/recipe.yaml", tmp_path / "missing.yaml", tmp_path):
        with pytest.raises(BackboneSwapError) as caught:
            load_recipe(ref)
        assert "llava15-lora" in str(caught.value) and "tiny-cpu" in str(caught.value)
        assert str(ref) in str(caught.value)


def test_a_local_file_wins_over_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = _tiny()
    data["seed"] = 7
    _write(tmp_path, data, "llava15-lora.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_recipe("llava15-lora.yaml").seed == 7
    assert load_recipe("llava15-lora").seed == 42


# ---------------------------------------------------------------------------------------------- accumulation


def _stage(global_batch: int, micro_batch: int) -> Stage:
    return Stage(name="stage2", train_projector=True, lora=None, epochs=1.0, max_steps=None, lr=1e-3,
                 projector_lr=None, global_batch=global_batch, micro_batch=micro_batch, warmup_ratio=0.0,
                 scheduler="cosine", weight_decay=0.0, max_grad_norm=None)


@pytest.mark.parametrize(("global_batch", "micro_batch", "world", "steps"), [
    (128, 16, 1, 8), (128, 16, 2, 4), (128, 16, 8, 1), (256, 16, 4, 4), (8, 8, 1, 1), (6, 2, 3, 1),
])
def test_accumulation(global_batch: int, micro_batch: int, world: int, steps: int):
    assert _stage(global_batch, micro_batch).accumulation(world) == steps


def test_accumulation_that_does_not_divide_suggests_a_micro_batch():
    with pytest.raises(BackboneSwapError) as caught:
        _stage(128, 16).accumulation(16)
    assert "stages.stage2.micro_batch=8" in str(caught.value)
    with pytest.raises(BackboneSwapError, match="multiple of 3"):
        _stage(128, 16).accumulation(3)
    for bad in (0, -1, True):
        with pytest.raises(BackboneSwapError):
            _stage(128, 16).accumulation(bad)


# ---------------------------------------------------------------------------------------------- packaging


def test_every_subpackage_is_listed_in_pyproject():
    """The recipes folder is mapped into the package, so pyproject lists packages by hand: keep it complete."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "backbone_swap").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert set(config["packages"]) == on_disk | {"backbone_swap.recipes"}
    assert config["package-dir"] == {"backbone_swap.recipes": "recipes"}
    assert "*.yaml" in config["package-data"]["backbone_swap.recipes"]


def test_every_shipped_data_file_is_in_package_data():
    """A configuration or suite file that no package-data pattern matches is missing from the wheel."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "backbone_swap.recipes"]
    shipped = [p.relative_to(ROOT / "recipes").as_posix() for p in (ROOT / "recipes").rglob("*")
               if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts]
    # fnmatch's * also crosses "/", so compare folder depth as setuptools does
    unmatched = [f for f in shipped if not any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/")
                                               for pat in patterns)]
    assert not unmatched


@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_accelerate_config_loads(path: Path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes == 8 and config.mixed_precision == "bf16"
    assert "accelerate launch --config_file recipes/accelerate/" + path.name in path.read_text()
    kind = str(config.distributed_type).split(".")[-1]
    if kind == "FSDP":
        assert str(config.fsdp_config["fsdp_version"]) == "2"  # the trainer refuses FSDP1
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] in (2, 3)


def test_types_are_frozen():
    recipe = load_recipe("tiny-cpu")
    assert recipe_from_dict(recipe_to_dict(recipe), "tiny-cpu.yaml") == recipe
    with pytest.raises(AttributeError):
        recipe.seed = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        recipe.stages[0].lr = 1.0  # type: ignore[misc]


def test_a_cpu_slow_at_the_recipes_precision_is_named_with_the_option_that_helps():
    from backbone_swap.training.speed import slow_precision_warning

    # the rates seen on a server CPU without bfloat16 matrix units: 0.4 GFLOP/s against 110 in float32
    warning = slow_precision_warning("bf16", 0.4e9, 110e9)
    assert warning == ("warning: this CPU multiplies bfloat16 matrices at 400 MFLOP/s against 110 GFLOP/s in "
                       "float32, so the recipe's bf16 would train about 275 times slower here; pass --set "
                       "precision=fp32 to train in float32")
    assert slow_precision_warning("bf16", 25e9, 110e9) is not None  # 4.4 times slower
    assert slow_precision_warning("bf16", 30e9, 110e9) is None  # 3.7: within the factor of 4 that fp32's bytes cost
    assert slow_precision_warning("fp32", 0.4e9, 110e9) is None


def test_the_measured_matrix_speed_counts_the_products_it_times():
    """fp32 products on a CPU measured between 10 MFLOP/s (a loaded 2-core machine is above it) and 10 TFLOP/s
    (above any CPU): a count off by a factor of the matrix size would leave that range."""
    from backbone_swap.training.speed import matmul_rate

    rate = matmul_rate("fp32", "cpu")
    assert 1e7 < rate < 1e13
