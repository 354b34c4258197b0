"""Builds the real-engine tier's models offline: two tiny random-weight Llamas and a LoRA
adapter for the first. Nothing is downloaded (HF_HUB_OFFLINE=1); the tokenizer is a byte-level
BPE trained on text files given on the command line.

    build_models.py OUT_DIR TEXT_FILE...

Writes OUT_DIR/tiny-llama-a, OUT_DIR/tiny-llama-b, OUT_DIR/tiny-llama-a-lora and, last,
OUT_DIR/BUILT (the build's parameters): a directory with BUILT is complete.
"""

import json
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

# vLLM's CPU attention needs a head size of at least 32: 64 / 2 heads.
SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=4096,
)
VOCAB = 512
LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
# A plain chat template (ChatML-like), so that /v1/chat/completions works.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, seed, out):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
        **SHAPE,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return model


def greedy(model, tokenizer, prompt, n=12):
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def main():
    out_dir, text_files = sys.argv[1], sys.argv[2:]
    if not text_files:
        sys.exit("usage: build_models.py OUT_DIR TEXT_FILE...")
    texts = []
    for path in text_files:
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.extend(line for line in f if line.strip())
    tmp = out_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)

    tokenizer = train_tokenizer(texts)
    base = build_model(tokenizer, 1, os.path.join(tmp, "tiny-llama-a"))
    build_model(tokenizer, 2, os.path.join(tmp, "tiny-llama-b"))

    # init_lora_weights=False: random A and B, so the adapter changes the output (peft's
    # default makes B zero, an adapter that answers exactly like its base).
    torch.manual_seed(3)
    adapted = get_peft_model(base, LoraConfig(init_lora_weights=False, **LORA))
    adapted.save_pretrained(os.path.join(tmp, "tiny-llama-a-lora"))
    prompt = "The model routes each request"
    with adapted.disable_adapter():
        plain = greedy(adapted, tokenizer, prompt)
    lora = greedy(adapted, tokenizer, prompt)
    if plain == lora:
        sys.exit("the adapter answers like its base model; change the seed")

    with open(os.path.join(tmp, "BUILT"), "w") as f:
        json.dump({"shape": SHAPE, "vocab": len(tokenizer), "lora": LORA}, f, indent=1)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp, out_dir)
    print(f"models in {out_dir}: tiny-llama-a, tiny-llama-b, tiny-llama-a-lora (vocab {len(tokenizer)})")


if __name__ == "__main__":
    main()
