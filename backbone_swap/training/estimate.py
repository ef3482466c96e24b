"""What a training run will cost, from the checkpoints' tensor shapes and a sample of the data.

``upgrade`` shows these figures in its plan, before hours of accelerator time are committed, so they count
what the training loop really runs: the LLM's matrix products and attention in the forward pass, the
backward pass through a frozen LLM (input gradients only), the recomputation under gradient checkpointing,
LoRA and projector work, and the vision tower once per distinct image (the feature cache). Memory is the
peak of one device without sharding: weights, trainable state, activations and logits of the longest batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bytes per element of each training precision
PRECISION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# records whose text is tokenised to measure the tokenizer's characters per token
SAMPLE = 256


@dataclass(frozen=True)
class Shapes:
    """The sizes the cost depends on, read from safetensors headers and configs."""

    layer_linear: int  # weights of the decoder layers' Linear layers (every token passes through them)
    head_linear: int  # the output projection (vocabulary x hidden), tied or not
    layers: int
    attention_width: int  # heads x head dimension
    hidden: int
    vocab: int
    vision_params: int
    vision_layers: int
    vision_width: int
    vision_tokens: int  # positions the tower runs over (patches and class token)
    image_tokens: int  # features the LLM receives per image
    projector_in: int
    projector_out: int
    lora_params: int  # sum of r x (in + out) over the adapted Linear layers
    llm_params: int  # every LLM weight (embeddings included), for memory
    intermediate: int = 0  # the inner width of a decoder layer's gated MLP (0: not known)

    @property
    def projector_params(self) -> int:
        """mlp2x_gelu: Linear(in -> out), GELU, Linear(out -> out), with biases."""
        return self.projector_in * self.projector_out + self.projector_out ** 2 + 2 * self.projector_out


@dataclass(frozen=True)
class DataSize:
    """Token counts of a data file, measured on a sample and scaled to every record."""

    records: int
    images: int
    tokens: float  # sum of sample lengths
    tokens_squared: float  # sum of squared lengths (attention grows with the square)
    longest: int
    distinct_images: int = 0  # image paths named by the records (the cache also merges equal files)
    supervised: float = 0.0  # sum of the tokens the loss reads (the replies and their end-of-turn tokens)
    most_supervised: int = 0  # the most of one record


# the Linear layers that only a gated MLP has (Llama, Mistral, Qwen, Gemma: gate_proj; Phi-3: fused gate_up_proj)
GATE_PROJECTIONS = ("gate_proj", "gate_up_proj")


def llm_shapes(config: dict[str, Any], weights, lora_targets: tuple[str, ...], lora_r: int,
               rows: int | None = None) -> dict[str, int]:
    """The LLM's part of :class:`Shapes`: Linear weights by layer, attention width, LoRA size; ``rows`` is the
    vocabulary after the transplant adds its tokens."""
    layer_linear = lora = 0
    gated = False
    for name in weights.names():
        parts = name.split(".")
        shape = weights.shape(name)
        if "layers" not in parts or parts[-1] != "weight" or len(shape) != 2:
            continue
        gated = gated or parts[-2] in GATE_PROJECTIONS
        layer_linear += shape[0] * shape[1]
        if parts[-2] in lora_targets:
            lora += lora_r * (shape[0] + shape[1])
    hidden = int(config.get("hidden_size") or 0)
    heads = int(config.get("num_attention_heads") or 0)
    head_dim = int(config.get("head_dim") or (hidden // heads if heads else 0))
    vocab = rows or int(config.get("vocab_size") or 0)
    return {"layer_linear": layer_linear, "head_linear": vocab * hidden,
            "layers": int(config.get("num_hidden_layers") or 0), "attention_width": heads * head_dim,
            "hidden": hidden, "vocab": vocab, "lora_params": lora,
            # the activation count of a gated MLP (Llama's); any other MLP is counted as GPT's
            "intermediate": int(config.get("intermediate_size") or 0) if gated else 0}


def shapes_of(old, new, new_checkpoint, compat, lora_targets: tuple[str, ...], lora_r: int) -> Shapes:
    """The shapes of the model a transplant of ``old``'s tower onto ``new`` (an LLM) would train."""
    from backbone_swap.checkpoints.parts import VISION_TOWERS

    vision = old.vision
    patches = (vision.image_size // vision.patch_size) ** 2 if vision else 0
    return Shapes(
        **llm_shapes(new_checkpoint.config, new_checkpoint.weights, lora_targets, lora_r,
                     rows=compat.embedding_rows[1]),
        vision_params=old.parameters.get("vision_tower", 0), vision_layers=vision.num_layers if vision else 0,
        vision_width=vision.hidden_size if vision else 0,
        vision_tokens=patches + VISION_TOWERS.get(vision.model_type, 0) if vision else 0,
        image_tokens=vision.image_tokens if vision else 0, projector_in=compat.projector_in,
        projector_out=compat.projector_out, llm_params=new.parameters.get("language_model", 0),
    )


def sample_flops(shapes: Shapes, length: float, length_squared: float, *, lora: bool,
                 checkpointing: bool, supervised: float | None = None) -> float:
    """Floating-point operations of the LLM for one training sample (forward and backward), the LLM frozen.

    ``length_squared`` is the square of the length (a sum of squares when ``length`` is a sum). A frozen
    Linear costs 2 x weights per token forward and as much backward (the input gradient; no weight gradient).
    Attention costs 4 x width x length^2 per layer forward (scores and weighted sum) and twice that backward.
    Checkpointing runs the decoder layers' forward again (torch stops a layer's recomputation once the tensors
    its backward needs are rebuilt, so it skips the last product: the figure is a few percent high). A LoRA
    pair costs 2 x r x (in + out) per token forward, input gradient and weight gradient each, and its forward
    is recomputed with the layer's. The output layer runs on the ``supervised`` positions only (all of them
    when not given): the positions whose next token the loss reads.
    """
    attention = 4 * shapes.layers * shapes.attention_width * length_squared
    layer_forward = 2 * shapes.layer_linear * length + attention
    head_forward = 2 * shapes.head_linear * (length if supervised is None else supervised)
    total = 2 * (layer_forward + head_forward) + attention
    if checkpointing:
        total += layer_forward
    if lora:
        total += (3 + checkpointing) * 2 * shapes.lora_params * length
    return float(total)


def projector_flops(shapes: Shapes) -> float:
    """The trained projector on one image: forward, weight gradients, and the input gradient of its second
    Linear (the features it reads need none)."""
    first, second = shapes.projector_in * shapes.projector_out, shapes.projector_out ** 2
    return float((4 * first + 6 * second) * shapes.image_tokens)


def tower_flops(shapes: Shapes) -> float:
    """The vision tower's forward over one image: every weight taken as a matrix product over every position
    (its position embeddings and norms are not, under 1% of a CLIP-L tower's weights)."""
    tokens = shapes.vision_tokens
    return float(2 * shapes.vision_params * tokens + 4 * shapes.vision_layers * shapes.vision_width * tokens ** 2)


def measure_data(path: Path, tokenizer, image_tokens: int, *, seed: int = 0) -> DataSize:
    """Lengths of every record, from its characters and the tokenizer's characters per token on a sample.

    The sample is rendered with the tokenizer's chat template (plain text when it has none or refuses), so
    the template's own tokens per turn are counted."""
    from backbone_swap.training.data import IMAGE_PLACEHOLDER, ROLES, read_records

    chars, has_image, distinct, replies = [], [], set(), []
    for _, record in read_records(path):
        if not isinstance(record, dict):
            continue
        turns = [t for t in record.get("conversations", []) or [] if isinstance(t, dict)]
        chars.append(sum(len(str(t.get("value", "")).replace(IMAGE_PLACEHOLDER, "")) for t in turns))
        answers = [t for t in turns if ROLES.get(t.get("from")) == "assistant"]
        replies.append((sum(len(str(t.get("value", ""))) for t in answers), len(answers)))
        has_image.append(bool(record.get("image")))
        if record.get("image"):
            distinct.add(str(record["image"]))
    records = [r for _, r in read_records(path) if isinstance(r, dict)] if len(chars) <= SAMPLE else None
    indices = sorted(random.Random(seed).sample(range(len(chars)), min(SAMPLE, len(chars))))
    if records is None:  # a large file: read the sampled records in a second pass
        wanted, records, position = set(indices), {}, 0
        for _, record in read_records(path):
            if isinstance(record, dict):
                if position in wanted:
                    records[position] = record
                position += 1
    sample_tokens = sample_chars = reply_tokens = reply_chars = 0
    for index in indices:
        sample_tokens += _text_tokens(records[index], tokenizer)
        sample_chars += chars[index]
        reply_tokens += _reply_tokens(records[index], tokenizer)
        reply_chars += replies[index][0]
    per_char = sample_tokens / max(sample_chars, 1)
    per_reply_char = reply_tokens / max(reply_chars, 1)  # the template's own tokens are not in the replies
    lengths = [c * per_char + (image_tokens if image else 0) for c, image in zip(chars, has_image, strict=True)]
    supervised = [c * per_reply_char + n for c, n in replies]  # each reply's tokens and its end-of-turn token
    return DataSize(records=len(chars), images=sum(has_image), tokens=sum(lengths),
                    tokens_squared=sum(n * n for n in lengths), longest=round(max(lengths, default=0)),
                    distinct_images=len(distinct), supervised=sum(supervised),
                    most_supervised=round(max(supervised, default=0)))


def _reply_tokens(record: dict[str, Any], tokenizer) -> int:
    from backbone_swap.training.data import ROLES

    turns = [t for t in record.get("conversations", []) or [] if isinstance(t, dict)]
    return sum(len(tokenizer(str(t.get("value", "")).strip(), add_special_tokens=False)["input_ids"])
               for t in turns if ROLES.get(t.get("from")) == "assistant")


def _text_tokens(record: dict[str, Any], tokenizer) -> int:
    from backbone_swap.checkpoints.templates import TEMPLATE_VARIABLES
    from backbone_swap.training.data import IMAGE_PLACEHOLDER, ROLES

    turns = [t for t in record.get("conversations", []) or [] if isinstance(t, dict)]
    messages = [{"role": ROLES.get(t.get("from"), "user"),
                 "content": str(t.get("value", "")).replace(IMAGE_PLACEHOLDER, "").strip()} for t in turns]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **TEMPLATE_VARIABLES)
    except Exception:  # no template, or one that refuses this conversation: the text alone
        text = "\n".join(m["content"] for m in messages)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def training_flops(shapes: Shapes, data: DataSize, recipe, *, cache_features: bool = True) -> float:
    """Every stage's epochs over the data (fewer when ``max_steps`` caps it), plus the tower's features (once
    each with the cache)."""
    total = 0.0
    for stage in recipe.stages:
        per_epoch = sample_flops(shapes, data.tokens, data.tokens_squared, lora=stage.lora is not None,
                                 checkpointing=recipe.gradient_checkpointing, supervised=data.supervised)
        per_epoch += projector_flops(shapes) * data.images
        if not cache_features:
            per_epoch += tower_flops(shapes) * data.images
        epochs = stage.epochs
        if stage.max_steps is not None and data.records:
            epochs = min(epochs, stage.max_steps * stage.global_batch / data.records)
        total += per_epoch * epochs
    if cache_features:
        total += tower_flops(shapes) * data.distinct_images
    return total


def model_bytes(vlm_checkpoint, llm_checkpoint, shapes: Shapes) -> int:
    """Bytes of the model a transplant writes (and a merged export writes again): the VLM's vision tower as it
    is, the LLM with the rows of its added tokens, and the new projector in the LLM's dtype."""
    from backbone_swap.checkpoints.formats import component_of
    from backbone_swap.checkpoints.streaming import DTYPE_SIZES

    vlm, llm = vlm_checkpoint.weights, llm_checkpoint.weights
    tower = sum(vlm.nbytes(n) for n in vlm.names() if component_of(n, "vlm") == "vision_tower")
    embeddings = [n for n in llm.names() if n.endswith("embed_tokens.weight")]
    heads = [n for n in llm.names() if n.endswith("lm_head.weight")]
    width = DTYPE_SIZES[llm.dtype(embeddings[0])] if embeddings else 2
    rows_before = llm.shape(embeddings[0])[0] if embeddings else shapes.vocab
    added = max(shapes.vocab - rows_before, 0) * shapes.hidden * (1 + len(heads))
    return tower + sum(llm.nbytes(n) for n in llm.names()) + (added + shapes.projector_params) * width


def run_bytes(model: int, trainable: int, stages: int) -> int:
    """Bytes a run folder takes at most for one model it trains: the transplant, the merged export, the
    trainable weights (float32) of each stage and of the adapter, and the checkpoints of the stage in progress
    (weights and Adam's two moments; the last one is kept until the next is whole, so two at a time)."""
    return 2 * model + trainable * 4 * (stages + 1 + 2 * 3)


def peak_memory(shapes: Shapes, data: DataSize, recipe, *, trainable: int) -> dict[str, int]:
    """Bytes on one device at the longest batch, by part (no sharding, no offload)."""
    from backbone_swap.training.model import LOSS_CHUNK_ROWS

    width = PRECISION_BYTES[recipe.precision]
    micro = max(s.micro_batch for s in recipe.stages)
    length = min(data.longest, recipe.max_length)
    tokens = micro * length
    hidden, inner = shapes.hidden, shapes.intermediate
    # kept for the backward per token and layer, in 16-bit bytes, with flash attention (Korthikanti et al.):
    # attention 11h and two norms 4h, and the MLP: a gated one (Llama's) keeps its input 2h and four tensors of
    # its inner width (gate, up, activation, product); a GPT layer with its 4h MLP makes the paper's 34h in all
    layer_bytes = ((17 * hidden + 8 * inner) if inner else 34 * hidden) * width // 2
    # the backward of one layer holds gradients of the inner width at a time: three (gate, up, activation) counted
    backward = 3 * (inner or 4 * hidden) * width
    if recipe.gradient_checkpointing:  # each layer's input kept, one layer's activations live at a time
        activations = tokens * hidden * width * shapes.layers + tokens * (layer_bytes + backward)
    else:
        activations = tokens * (layer_bytes * shapes.layers + backward)
    weights = (shapes.vision_params + shapes.llm_params) * width
    return {
        "weights": int(weights),
        # fp32 weight, gradient and two Adam moments, and the temporary the optimizer step makes of each
        "trainable_state": int(trainable * 20),
        "activations": int(activations),
        # the logits of the supervised positions, their fp32 copy for the loss and its gradient (training makes
        # them LOSS_CHUNK_ROWS rows at a time beyond that many)
        "logits": int(min(micro * min(data.most_supervised, length), LOSS_CHUNK_ROWS) * shapes.vocab * (width + 8)),
    }
