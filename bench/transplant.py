"""Transplant time and peak memory on a synthetic checkpoint, against copying files and the naive path.

    python bench/transplant.py [--workdir DIR] [--llm-layers 16]

Builds (once, in --workdir) a VLM with a CLIP-L/336-sized tower and a ~1B-parameter bfloat16 LLM,
then runs, each in a fresh process so peak RSS is its own:
  copy       copying the input weight files (what the disk allows at best)
  transplant backbone_swap.transplant (streamed), with and without hashing the inputs
  naive      from_pretrained both models, build the LLaVA model, assign, save_pretrained
and prints times, peak RSS above the import baseline, and the ratios the goals are stated in:
transplant time / copy time (goal <= 2) and peak RSS / largest component (goal <= 1.2).

A second LLM with Llama 3's 128,256-row vocabulary (hidden 1024, untied output layer: two 263 MB bf16 matrices
that the transplant resizes) gives the row that follows the largest tensor instead: peak RSS / largest tensor
(goal <= 1.2), where resizing a matrix whole costs several times it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
mode, old, new, out = sys.argv[1:5]

def peak_kb():  # VmHWM starts afresh at exec, unlike ru_maxrss which a child inherits from its parent
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

# every path pays the same imports before the clock starts
import torch  # noqa: F401
from transformers import (AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoProcessor,  # noqa: F401
                          AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor)
from backbone_swap.transplant import transplant
base = peak_kb()
t = time.perf_counter()
if mode == "copy":
    import os, shutil
    from pathlib import Path
    for src in (Path(old), Path(new)):
        dst = Path(out) / src.name
        dst.mkdir(parents=True)
        for f in src.glob("*.safetensors"):
            shutil.copyfile(f, dst / f.name)
            with open(dst / f.name, "rb+") as g:  # the transplant makes its files durable too
                os.fsync(g.fileno())
elif mode in ("transplant", "transplant-nohash"):
    transplant(old, new, out, hash_inputs=mode == "transplant")
elif mode == "naive":
    vlm = LlavaForConditionalGeneration.from_pretrained(old)
    llm = AutoModelForCausalLM.from_pretrained(new)
    tok = AutoTokenizer.from_pretrained(new)
    tok.add_tokens(["<image>"], special_tokens=True)
    llm.resize_token_embeddings(max(len(tok), llm.config.vocab_size))
    config = LlavaConfig(vision_config=vlm.config.vision_config, text_config=llm.config,
                         image_token_index=tok.convert_tokens_to_ids("<image>"))
    model = LlavaForConditionalGeneration(config).to(llm.dtype)
    model.model.vision_tower.load_state_dict(vlm.model.vision_tower.state_dict())
    model.model.language_model.load_state_dict(llm.model.state_dict())
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    model.save_pretrained(out)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak_kb": peak_kb(), "base_kb": base}))
"""


def build_inputs(root: Path, llm_layers: int) -> tuple[Path, Path, int]:
    """Write the synthetic VLM and LLM with the streaming writer (random bf16/fp16 values)."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from backbone_swap.checkpoints import streaming as st
    from backbone_swap.demo import tiny_models as tm

    old, new = root / "old-vlm", root / "new-llm"
    if (old / "model.safetensors").exists() and (new / "done").exists():
        return old, new, _bytes(new)
    shutil.rmtree(root, ignore_errors=True)
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    tok_spec = tm.TokenizerSpec(chat_template=tm.LLAVA_TEMPLATE, pad="<pad>")
    tokenizer = tm.train_tokenizer(tok_spec)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14)
    small_text = LlamaConfig(vocab_size=32064, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                             num_attention_heads=8, num_key_value_heads=8, pad_token_id=tokenizer.pad_token_id)
    vlm_config = LlavaConfig(vision_config=vision, text_config=small_text,
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=576)
    big_text = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=llm_layers,
                           num_attention_heads=16, num_key_value_heads=16, pad_token_id=tokenizer.pad_token_id)

    def random_tensors(model, dtype, skip=()):
        return [
            st.PlannedTensor(name, st.safetensors_dtype(dtype), tuple(t.shape),
                             lambda s=tuple(t.shape): st.tensor_to_bytes(torch.randn(s).mul_(0.02).to(dtype)))
            for name, t in model.state_dict().items() if name not in skip
        ]

    with torch.device("meta"):
        vlm_model = LlavaForConditionalGeneration(vlm_config)
        llm_model = LlamaForCausalLM(big_text)
    vlm_config.save_pretrained(old)
    st.write_file(old / "model.safetensors", random_tensors(vlm_model, torch.float16))
    vision_spec = tm.VisionSpec(image_size=336, patch_size=14)
    LlavaProcessor(image_processor=tm.image_processor(vision_spec), tokenizer=tokenizer, patch_size=14,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=tm.LLAVA_TEMPLATE).save_pretrained(old)
    big_text.save_pretrained(new)
    st.write_checkpoint(new, random_tensors(llm_model, torch.bfloat16), max_shard_bytes=2 * 10**9)
    llm_tok = tm.train_tokenizer(tm.TokenizerSpec(chat_template=tm.MISTRAL_TEMPLATE))
    llm_tok.save_pretrained(new)
    (new / "done").write_text("")
    return old, new, _bytes(new)


def build_vocab_llm(root: Path) -> Path:
    """An LLM whose largest tensors are a 128,256 x 1024 embedding and output layer (bf16), as Llama 3's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from backbone_swap.checkpoints import streaming as st
    from backbone_swap.demo import tiny_models as tm

    new = root / "new-llm-128k"
    if (new / "done").exists():
        return new
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    config = LlamaConfig(vocab_size=128256, hidden_size=1024, intermediate_size=2816, num_hidden_layers=2,
                         num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    config.save_pretrained(new)
    planned = [st.PlannedTensor(name, "BF16", tuple(t.shape),
                                lambda s=tuple(t.shape): st.tensor_to_bytes(torch.randn(s).mul_(0.02).bfloat16()))
               for name, t in model.state_dict().items()]
    st.write_checkpoint(new, planned, max_shard_bytes=2 * 10**9)
    tm.train_tokenizer(tm.TokenizerSpec(chat_template=tm.MISTRAL_TEMPLATE)).save_pretrained(new)
    (new / "done").write_text("")
    return new


def _largest_tensor(folder: Path) -> int:
    from backbone_swap.checkpoints import streaming as st

    return max(entry.nbytes for f in folder.glob("*.safetensors") for entry in st.read_header(f)[0].values())


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def run(mode: str, old: Path, new: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run([sys.executable, "-c", CHILD, mode, str(old), str(new), str(out)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "backbone-swap-bench")
    parser.add_argument("--llm-layers", type=int, default=16)
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()
    old, new, llm_bytes = build_inputs(args.workdir / "inputs", args.llm_layers)
    vlm_bytes = _bytes(old)
    print(f"inputs: VLM {vlm_bytes / 1e9:.2f} GB, LLM {llm_bytes / 1e9:.2f} GB (largest component)")
    out = args.workdir / "out"
    modes = ["copy", "transplant", "transplant-nohash"] + ([] if args.skip_naive else ["naive"])
    results = {m: run(m, old, new, out) for m in modes}
    print(f"import baseline RSS {results['copy']['base_kb'] / 1e6:.2f} GB (each path's own, subtracted below)")
    print(f"{'path':<18}{'seconds':>10}{'peak RSS GB':>14}{'RSS / largest':>15}")
    for mode, r in results.items():
        extra = (r["peak_kb"] - r["base_kb"]) * 1024
        print(f"{mode:<18}{r['seconds']:>10.2f}{extra / 1e9:>14.2f}{extra / llm_bytes:>15.2f}")
    copy = results["copy"]["seconds"]
    print(f"transplant time / copy time: {results['transplant-nohash']['seconds'] / copy:.2f} "
          f"(with input hashing {results['transplant']['seconds'] / copy:.2f})")
    if "naive" in results:
        print(f"naive time / transplant time: {results['naive']['seconds'] / results['transplant']['seconds']:.2f}")
    vocab = build_vocab_llm(args.workdir / "inputs")
    largest = _largest_tensor(vocab)
    r = run("transplant-nohash", old, vocab, out)
    extra = (r["peak_kb"] - r["base_kb"]) * 1024
    print(f"transplant onto a 128,256-row vocabulary: {r['seconds']:.2f} s, peak RSS above imports "
          f"{extra / 1e9:.2f} GB, largest tensor {largest / 1e9:.3f} GB: RSS / largest tensor {extra / largest:.2f} "
          "(goal <= 1.2)")


if __name__ == "__main__":
    main()
