"""Tiny, offline-built checkpoints of the same kinds users pass to backbone-swap.

Everything here is made from configs with random weights and tokenizers trained on a few sentences with
the ``tokenizers`` library, so the tests and the demo never need a model hub. The folders written are
ordinary Hugging Face checkpoints (safetensors, tokenizer, chat template, processor), loaded by the
product through the same ``from_pretrained`` path as a user's 7B model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# A LLaVA-1.5 style template that understands the processor's typed message contents.
LLAVA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% else %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}"
    "{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Qwen2-style ChatML: the end of turn is a special token of its own, not the eos of pre-training.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Mistral-style instruction template: no system role, no pad token in the tokenizer.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)

# Llama 3.2 Instruct's own chat template (tokenizer_config.json), verbatim: it writes the BOS itself, puts a
# system block with "Today Date:" from the clock (strftime_now) unless date_string is given, trims every
# message, and ends each turn with the <|eot_id|> special token.
LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""  # noqa: E501 (verbatim)

# Qwen3's own chat template (tokenizer_config.json of the Qwen3 instruct/hybrid-thinking models), verbatim.
# It is not incremental: the last assistant reply after the last user query gets a <think> block (empty
# when the message has no reasoning), while earlier replies have theirs stripped.
QWEN3_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""  # noqa: E501 (kept verbatim, long lines included)

DEFAULT_CORPUS = (
    "what colour is the shape in the picture",
    "the red circle is left of the blue square",
    "answer with one word",
    "there are three green triangles and two yellow stars",
    "give the coordinates of the object as json",
    '{"x": 12, "y": 30}',
    "how many shapes are there",
    "which one is bigger, the circle or the square",
    "a picture of a purple ring on a white background",
)


@dataclass(frozen=True)
class TokenizerSpec:
    """What makes one tiny tokenizer different from another (vocabulary, specials, template)."""

    vocab_size: int = 320
    bos: str | None = "<s>"
    eos: str = "</s>"
    unk: str | None = "<unk>"
    pad: str | None = None
    extra_special: tuple[str, ...] = ()
    added: tuple[str, ...] = ()  # added tokens that are not special (Qwen3's <think>, </think>)
    chat_template: str | None = None
    corpus: tuple[str, ...] = DEFAULT_CORPUS
    model_max_length: int = 512


def train_tokenizer(spec: TokenizerSpec):
    """Train a byte-level BPE tokenizer offline and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [t for t in (spec.unk, spec.bos, spec.eos, spec.pad) if t] + list(spec.extra_special)
    tokenizer = Tokenizer(models.BPE(unk_token=spec.unk))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_repeat(spec.corpus, 20), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=spec.bos,
        eos_token=spec.eos,
        unk_token=spec.unk,
        pad_token=spec.pad,
        model_max_length=spec.model_max_length,
    )
    if spec.extra_special:
        fast.add_special_tokens({"additional_special_tokens": list(spec.extra_special)})
    if spec.added:
        fast.add_tokens(list(spec.added))
    if spec.chat_template:
        fast.chat_template = spec.chat_template
    return fast


def _repeat(lines: Sequence[str], times: int) -> Iterable[str]:
    for _ in range(times):
        yield from lines


@dataclass(frozen=True)
class LLMSpec:
    """A tiny causal LM of one family, with its own tokenizer."""

    family: str
    hidden_size: int = 48
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 96
    tie_word_embeddings: bool = False
    dtype: str = "float32"
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    seed: int = 0
    # Larger than the usual 0.02: with a frozen output layer and a final norm, a randomly initialised
    # tiny LLM can only move its logits by about init_range * hidden_size, too little to ever answer.
    initializer_range: float = 0.2
    max_positions: int = 512


_CONFIG_CLASSES = {
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "mistral": "MistralConfig",
    "phi3": "Phi3Config",
    "gemma2": "Gemma2Config",
    "qwen3": "Qwen3Config",
    "gemma": "GemmaConfig",
    "gemma3_text": "Gemma3TextConfig",
    "olmo2": "Olmo2Config",
}


def text_config(spec: LLMSpec, tokenizer):
    """The transformers config of a tiny LLM whose special-token ids match its tokenizer."""
    import transformers

    cls = getattr(transformers, _CONFIG_CLASSES[spec.family])
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=spec.initializer_range,
    )
    if spec.family in {"gemma", "gemma2", "qwen3", "gemma3_text"}:
        kwargs["head_dim"] = spec.hidden_size // spec.heads
    return cls(**kwargs)


def build_llm(path: str | Path, spec: LLMSpec) -> Path:
    """Write a tiny ``AutoModelForCausalLM`` checkpoint (safetensors + tokenizer) to ``path``."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tokenizer = train_tokenizer(spec.tokenizer)
    config = text_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config).to(getattr(torch, spec.dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@dataclass(frozen=True)
class VisionSpec:
    """A tiny vision tower (CLIP by default) and how LLaVA reads its features."""

    model_type: str = "clip_vision_model"
    hidden_size: int = 32
    layers: int = 2
    heads: int = 2
    image_size: int = 32
    patch_size: int = 8
    feature_layer: int | list[int] = -2
    select_strategy: str = "default"
    intermediate_size: int | None = None  # default: twice the width (CLIP-L uses four times)


def vision_config(spec: VisionSpec):
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    cls = {"clip_vision_model": CLIPVisionConfig, "siglip_vision_model": SiglipVisionConfig}[spec.model_type]
    return cls(
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size or spec.hidden_size * 2,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )


def image_processor(spec: VisionSpec):
    """The vision side's preprocessing; the PIL backend keeps torchvision optional."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    size = spec.image_size
    return CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_center_crop=True
    )


def _build_vlm(path: str | Path, llm: LLMSpec | None, vision: VisionSpec | None, *, image_token: str, seed: int,
               kind: str, image_processor_for, **config_extra) -> Path:
    """A tiny LLaVA (``kind`` "llava") or LLaVA-NeXT ("llava_next") checkpoint with its processor."""
    import torch
    import transformers

    names = {"llava": ("LlavaConfig", "LlavaForConditionalGeneration", "LlavaProcessor"),
             "llava_next": ("LlavaNextConfig", "LlavaNextForConditionalGeneration", "LlavaNextProcessor")}[kind]
    config_cls, model_cls, processor_cls = (getattr(transformers, name) for name in names)
    path = Path(path)
    llm = llm or LLMSpec(family="llama", tokenizer=TokenizerSpec(chat_template=LLAVA_TEMPLATE, pad="<pad>"))
    vision = vision or VisionSpec()
    tokenizer = train_tokenizer(llm.tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    config = config_cls(
        vision_config=vision_config(vision),
        text_config=text_config(llm, tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids(image_token),
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
        vision_feature_layer=vision.feature_layer,
        vision_feature_select_strategy=vision.select_strategy,
        tie_word_embeddings=llm.tie_word_embeddings,
        **config_extra,
    )
    torch.manual_seed(seed)
    model = model_cls(config).to(getattr(torch, llm.dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = processor_cls(
        image_processor=image_processor_for(vision),
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=vision.select_strategy,
        num_additional_image_tokens=1 if vision.model_type == "clip_vision_model" else 0,
        image_token=image_token,
        chat_template=llm.tokenizer.chat_template,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_llava(
    path: str | Path,
    llm: LLMSpec | None = None,
    vision: VisionSpec | None = None,
    *,
    image_token: str = "<image>",
    seed: int = 0,
) -> Path:
    """Write a tiny ``LlavaForConditionalGeneration`` checkpoint with its processor to ``path``."""
    return _build_vlm(path, llm, vision, image_token=image_token, seed=seed, kind="llava",
                      image_processor_for=image_processor)


def qwen2_spec(**overrides) -> LLMSpec:
    """A Qwen2-like LLM: ChatML template, ``<|im_end|>`` end of turn, tied embeddings."""
    tok = TokenizerSpec(
        vocab_size=360,
        bos=None,
        eos="<|endoftext|>",
        unk=None,
        pad="<|endoftext|>",
        extra_special=("<|im_start|>", "<|im_end|>"),
        chat_template=CHATML_TEMPLATE,
    )
    base = dict(family="qwen2", hidden_size=64, intermediate_size=128, tie_word_embeddings=True, tokenizer=tok)
    base.update(overrides)
    return LLMSpec(**base)


def qwen3_spec(**overrides) -> LLMSpec:
    """A Qwen3-like LLM: its real thinking chat template, ``<|im_end|>`` as eos and end of turn, q/k norms."""
    tok = TokenizerSpec(
        vocab_size=360,
        bos=None,
        eos="<|im_end|>",
        unk=None,
        pad="<|endoftext|>",
        extra_special=("<|im_start|>",),
        added=("<think>", "</think>"),
        chat_template=QWEN3_TEMPLATE,
    )
    base = dict(family="qwen3", hidden_size=64, heads=4, kv_heads=2, intermediate_size=128, tie_word_embeddings=True,
                tokenizer=tok)
    base.update(overrides)
    return LLMSpec(**base)


def llama3_spec(**overrides) -> LLMSpec:
    """A Llama-3-Instruct-like LLM: its real chat template (BOS written by the template, a dated system block),
    ``<|eot_id|>`` as eos and end of turn, ``<|end_of_text|>`` the end of pre-training text, no pad and no unk
    token, untied embeddings."""
    tok = TokenizerSpec(vocab_size=340, bos="<|begin_of_text|>", eos="<|eot_id|>", unk=None, pad=None,
                        extra_special=("<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"),
                        chat_template=LLAMA3_TEMPLATE)
    base = dict(family="llama", hidden_size=64, heads=4, kv_heads=2, intermediate_size=128, tokenizer=tok)
    base.update(overrides)
    return LLMSpec(**base)


def mistral_spec(**overrides) -> LLMSpec:
    """A Mistral-like LLM: ``[INST]`` template and no pad token at all."""
    tok = TokenizerSpec(vocab_size=300, chat_template=MISTRAL_TEMPLATE, pad=None)
    base = dict(family="mistral", hidden_size=40, intermediate_size=80, heads=4, kv_heads=1, tokenizer=tok)
    base.update(overrides)
    return LLMSpec(**base)


def phi3_spec(**overrides) -> LLMSpec:
    """A Phi-3-like LLM: fused qkv and gate/up projections, ``<|end|>`` ends a turn, no pad token."""
    template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    tok = TokenizerSpec(vocab_size=310, chat_template=template, pad=None,
                        extra_special=("<|end|>", "<|user|>", "<|assistant|>"))
    base = dict(family="phi3", hidden_size=64, heads=4, kv_heads=4, intermediate_size=128, tokenizer=tok)
    base.update(overrides)
    return LLMSpec(**base)


def gemma2_spec(**overrides) -> LLMSpec:
    """A Gemma-2-like LLM: ``<start_of_turn>model`` turns ending in ``<end_of_turn>``, tied embeddings."""
    template = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
                "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
                "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    tok = TokenizerSpec(vocab_size=330, bos="<bos>", eos="<eos>", pad="<pad>", chat_template=template,
                        extra_special=("<start_of_turn>", "<end_of_turn>"))
    base = dict(family="gemma2", hidden_size=64, heads=4, kv_heads=2, intermediate_size=128,
                tie_word_embeddings=True, tokenizer=tok)
    base.update(overrides)
    return LLMSpec(**base)


def gemma_spec(**overrides) -> LLMSpec:
    """A first-generation Gemma: the same turn template as Gemma 2, without soft-capping."""
    return gemma2_spec(family="gemma", **overrides)


def gemma3_spec(**overrides) -> LLMSpec:
    """A Gemma-3-like text LLM (``gemma3_text``): Gemma's turn template, sliding-window layers, tied embeddings."""
    return gemma2_spec(family="gemma3_text", **overrides)


def olmo2_spec(**overrides) -> LLMSpec:
    """An OLMo-2-like LLM: a family the registry does not know, so LoRA targets come from module names."""
    base = dict(family="olmo2", hidden_size=64, intermediate_size=128, tokenizer=qwen2_spec().tokenizer)
    base.update(overrides)
    return LLMSpec(**base)


def build_llava_next(
    path: str | Path,
    llm: LLMSpec | None = None,
    vision: VisionSpec | None = None,
    *,
    grid_pinpoints: Sequence[Sequence[int]] = ((32, 64), (64, 32), (64, 64)),
    image_token: str = "<image>",
    seed: int = 0,
) -> Path:
    """Write a tiny ``LlavaNextForConditionalGeneration`` checkpoint (any-resolution tiling) to ``path``."""
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    pinpoints = [list(p) for p in grid_pinpoints]

    def tiles(vision: VisionSpec):
        size = vision.image_size
        return LlavaNextImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                          image_grid_pinpoints=pinpoints)

    return _build_vlm(path, llm, vision, image_token=image_token, seed=seed, kind="llava_next",
                      image_processor_for=tiles, image_grid_pinpoints=pinpoints)


def build_vision_tower(path: str | Path, vision: VisionSpec | None = None, *, seed: int = 0) -> Path:
    """Write a tiny CLIP vision tower folder as the original LLaVA code loads it by ``mm_vision_tower``.

    The weights carry ``vision_model.*`` names, as ``CLIPVisionModel`` checkpoints on the hub do (transformers
    5 itself would save them without the prefix), next to ``config.json`` and ``preprocessor_config.json``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionModel

    path = Path(path)
    vision = vision or VisionSpec()
    config = vision_config(vision)
    torch.manual_seed(seed)
    model = CLIPVisionModel(config)
    state = {f"vision_model.{k.removeprefix('vision_model.')}": v.contiguous() for k, v in model.state_dict().items()
             if "position_ids" not in k}
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    config.architectures = ["CLIPVisionModel"]
    config.save_pretrained(path)
    image_processor(vision).save_pretrained(path)
    return path


def build_original_llava(
    path: str | Path,
    llm: LLMSpec | None = None,
    vision: VisionSpec | None = None,
    *,
    mm_vision_tower: str = "openai/clip-vit-large-patch14-336",
    select_feature: str = "patch",
    select_layer: int = -2,
    model_type: str = "llava_llama",
    seed: int = 0,
) -> Path:
    """Write a tiny checkpoint in the layout of the original LLaVA training code (haotian-liu/LLaVA).

    ``config.json`` is a Llama config with the ``mm_*`` keys that code writes; the weights are the Llama
    model's plus ``model.mm_projector.0/.2`` (mlp2x_gelu); the vision tower is not included.
    """
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    path = Path(path)
    llm = llm or LLMSpec(family="llama", tokenizer=TokenizerSpec(chat_template=None, pad=None), seed=seed)
    vision = vision or VisionSpec()
    tokenizer = train_tokenizer(llm.tokenizer)
    config = text_config(llm, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(getattr(torch, llm.dtype))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if llm.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    first = torch.nn.Linear(vision.hidden_size, llm.hidden_size)
    second = torch.nn.Linear(llm.hidden_size, llm.hidden_size)
    for index, layer in (("0", first), ("2", second)):
        for name, param in layer.named_parameters():
            state[f"model.mm_projector.{index}.{name}"] = param.detach().to(getattr(torch, llm.dtype)).contiguous()
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    written = config.to_dict()
    written.update(
        architectures=["LlavaLlamaForCausalLM"],
        model_type=model_type,
        mm_vision_tower=mm_vision_tower,
        mm_hidden_size=vision.hidden_size,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=select_layer,
        mm_vision_select_feature=select_feature,
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        image_aspect_ratio="pad",
        tune_mm_mlp_adapter=False,
        use_mm_proj=True,
    )
    (path / "config.json").write_text(json.dumps(written, indent=2) + "\n")
    tokenizer.save_pretrained(path)
    return path
