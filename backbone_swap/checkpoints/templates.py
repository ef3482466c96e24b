"""Chat-template facts that decide whether a model can learn to take turns.

The end-of-turn token is read from what the template actually renders after an assistant reply, not
from a table of names: that is the token training must supervise, and the one padding must never be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backbone_swap.errors import BackboneSwapError

# Turns typed message contents ({"type": "image"} / {"type": "text"}) into the plain strings that a text
# LLM's template expects, then hands over to that template unchanged: the LLM keeps its own format and
# the processor can still be given images.
TEMPLATE_PREAMBLE = (
    "{%- set ns = namespace(messages=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string or message['content'] is none -%}"
    "{%- set ns.messages = ns.messages + [message] -%}"
    "{%- else -%}"
    "{%- set text = namespace(value='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set text.value = text.value + '<<IMAGE>>\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set text.value = text.value + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set ns.messages = ns.messages + [{'role': message['role'], 'content': text.value}] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = ns.messages -%}"
)
_PREAMBLE_START = TEMPLATE_PREAMBLE[: TEMPLATE_PREAMBLE.index("{%- for")]

# Variables every rendering passes to the chat template. Llama 3.2 and later write "Today Date:" from the
# clock (``strftime_now``) into every conversation unless ``date_string`` is given: the same data would then
# tokenise differently from one day to the next, so a run resumed after midnight, the two sides of a
# comparison trained on different days, or an evaluation repeated later would not see the same tokens. The
# value is the templates' own fallback.
TEMPLATE_VARIABLES = {"date_string": "26 Jul 2024"}


def template_variables(template: Any) -> dict[str, str]:
    """The TEMPLATE_VARIABLES a template reads: a processor takes any other keyword for its own ``__call__``
    and warns about it at every rendering."""
    text = template if isinstance(template, str) else " ".join(map(str, (template or {}).values()))
    return {k: v for k, v in TEMPLATE_VARIABLES.items() if k in text}


def processor_template(llm_template: str, image_token: str) -> str:
    """The LLM's chat template, made able to render messages that contain images."""
    if llm_template.startswith(_PREAMBLE_START):
        return llm_template  # already carries the preamble (a transplanted model transplanted again)
    return TEMPLATE_PREAMBLE.replace("<<IMAGE>>", image_token) + llm_template


_MARKER = "zq7 reply zq7"


def end_of_turn(tokenizer: Any, template: str | None = None) -> str | None:
    """The special token the template puts right after an assistant reply (``<|im_end|>``, ``</s>``, ...)."""
    chat = [{"role": "user", "content": "question"}, {"role": "assistant", "content": _MARKER}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False, chat_template=template, **TEMPLATE_VARIABLES)
    except Exception:  # a template may refuse this minimal conversation; then nothing is known
        return None
    if _MARKER not in text:
        return None
    after = text.split(_MARKER, 1)[1]
    specials = sorted(
        (t for t in tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()) if t), key=len, reverse=True
    )
    stripped = after.lstrip(" ")
    for token in specials:
        if stripped.startswith(token):
            return token
    return None


def no_end_of_turn(model: str | Path, eos_token: str | None,
                   remedy: str = "Transplant again with a --chat-template") -> BackboneSwapError:
    """Why a model whose template ends replies with no special token cannot be trained: it never learns to stop."""
    return BackboneSwapError(
        f"the chat template of {model} writes no special end-of-turn token after a reply (a separator "
        "written as text, such as '</s>' for a tokenizer without that token, is not one), so the trained model "
        "would never learn to stop",
        f"{remedy} that ends each reply with the tokenizer's own end-of-turn or eos token ({eos_token!r})",
    )


def reply_prefix(tokenizer: Any, template: str | None = None) -> str:
    """What the template writes between the generation prompt and a reply's text (usually nothing).

    Qwen3's template puts an empty ``<think>\\n\\n</think>\\n\\n`` block before the last reply: a model trained
    on its renderings generates that block before answering, and the answer is what follows it.
    """
    chat = [{"role": "user", "content": "question"}, {"role": "assistant", "content": _MARKER}]
    try:
        prompt = tokenizer.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True,
                                               chat_template=template, **TEMPLATE_VARIABLES)
        text = tokenizer.apply_chat_template(chat, tokenize=False, chat_template=template, **TEMPLATE_VARIABLES)
    except Exception:  # a template may refuse this minimal conversation; then nothing is known
        return ""
    if not text.startswith(prompt) or _MARKER not in text[len(prompt):]:
        return ""
    return text[len(prompt):].split(_MARKER, 1)[0]
