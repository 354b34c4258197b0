#!/usr/bin/env python3
"""Write a tiny random-weight Llama as a GGUF file, offline, for the llama.cpp real tier.

Two layers, 64-wide, head size 32, a SentencePiece-style vocabulary of byte tokens plus a
few hundred word pieces, and a chat template, all in F32 (about 1 MB). Nothing is
downloaded: only the `gguf` and `numpy` packages are needed. The output is gibberish, which
is all the tests need: they check routing, streaming and process handling, not text.

usage: make-tiny-gguf.py OUT.gguf [--seed N]
"""

import argparse
import string

import numpy as np
import gguf

N_EMBD, N_HEAD, N_HEAD_KV, N_LAYER, N_FF, N_CTX = 64, 2, 2, 2, 128, 1024
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def vocabulary():
    """<unk>, <s>, </s>, the 256 byte tokens, then word pieces with falling scores."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["\u2581"] + [f"\u2581{c}" for c in string.ascii_letters + string.digits]
    pieces += list(string.ascii_letters + string.digits + string.punctuation)
    words = "the a an of to and in is it you that he was for on are with as I his they be at one have this from or had by hot word but what some we can out other were all there when up use your how said each she which do their time if will way about many then them write would like so these her long make thing see him two has look more day could go come did number sound no most people my over know water than call first who may down side been now find hello world model serve engine test tiny llama".split()
    pieces += [f"\u2581{w}" for w in words if f"\u2581{w}" not in pieces]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)
    head = N_EMBD // N_HEAD

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name("tiny-random-llama")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    # numpy shapes are (out, in), as torch stores them; the writer reverses them for GGUF.
    w.add_tensor("token_embd.weight", rand(n_vocab, N_EMBD))
    for i in range(N_LAYER):
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"{p}.attn_q.weight", rand(N_EMBD, N_EMBD))
        w.add_tensor(f"{p}.attn_k.weight", rand(N_HEAD_KV * head, N_EMBD))
        w.add_tensor(f"{p}.attn_v.weight", rand(N_HEAD_KV * head, N_EMBD))
        w.add_tensor(f"{p}.attn_output.weight", rand(N_EMBD, N_EMBD))
        w.add_tensor(f"{p}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"{p}.ffn_gate.weight", rand(N_FF, N_EMBD))
        w.add_tensor(f"{p}.ffn_up.weight", rand(N_FF, N_EMBD))
        w.add_tensor(f"{p}.ffn_down.weight", rand(N_EMBD, N_FF))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    w.add_tensor("output.weight", rand(n_vocab, N_EMBD))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out}: {n_vocab} tokens, {N_LAYER} layers, {N_EMBD} wide")


if __name__ == "__main__":
    main()
