#!/usr/bin/env python3
"""How long `modelmux plan` takes for 32 models with real-sized safetensors headers.

Writes 32 fake model directories (real config.json shapes and the real tensor lists of
Llama-3-8B, Mistral-7B-v0.3, Qwen2-72B and Qwen2-0.5B, split into as many shards as the
published checkpoints, headers over sparse files: a few MB of disk in all), then runs the
release binary's `plan` and `plan --json` many times, each a fresh process as a user would
run it, and reports wall times. A second target plans the same 32 models as Hugging Face
ids (no files read), to show what reading the headers adds.

Usage: make build && python3 scripts/bench-plan.py [runs]   (default 40 runs per target)
"""

import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "modelmux")

# (name, vocab, hidden, intermediate, layers, heads, kv heads, max positions, qkv bias,
#  tied embeddings, shards as published, params)
ARCHS = {
    "llama-3-8b": (128256, 4096, 14336, 32, 32, 8, 8192, False, False, 4),
    "mistral-7b-v0.3": (32768, 4096, 14336, 32, 32, 8, 32768, False, False, 3),
    "qwen2-72b": (152064, 8192, 29568, 80, 64, 8, 32768, True, False, 37),
    "qwen2-0.5b": (151936, 896, 4864, 24, 14, 2, 32768, True, True, 1),
}


def tensors(vocab, hidden, inter, layers, heads, kv, bias, tied):
    head = hidden // heads
    out = [("model.embed_tokens.weight", [vocab, hidden])]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", [hidden]),
            (p + "self_attn.q_proj.weight", [hidden, hidden]),
            (p + "self_attn.k_proj.weight", [kv * head, hidden]),
            (p + "self_attn.v_proj.weight", [kv * head, hidden]),
        ]
        if bias:
            out += [
                (p + "self_attn.q_proj.bias", [hidden]),
                (p + "self_attn.k_proj.bias", [kv * head]),
                (p + "self_attn.v_proj.bias", [kv * head]),
            ]
        out += [
            (p + "self_attn.o_proj.weight", [hidden, hidden]),
            (p + "post_attention_layernorm.weight", [hidden]),
            (p + "mlp.gate_proj.weight", [inter, hidden]),
            (p + "mlp.up_proj.weight", [inter, hidden]),
            (p + "mlp.down_proj.weight", [hidden, inter]),
        ]
    out.append(("model.norm.weight", [hidden]))
    if not tied:
        out.append(("lm_head.weight", [vocab, hidden]))
    return out


def write_shard(path, chunk):
    header, offset = {}, 0
    for name, shape in chunk:
        size = 2
        for d in shape:
            size *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.truncate(8 + len(text) + offset)
    return len(text)


def write_model(directory, arch):
    vocab, hidden, inter, layers, heads, kv, maxpos, bias, tied, shards = ARCHS[arch]
    os.makedirs(directory)
    config = {
        "model_type": "qwen2" if arch.startswith("qwen") else arch.split("-")[0],
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "max_position_embeddings": maxpos,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
    }
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    ts = tensors(vocab, hidden, inter, layers, heads, kv, bias, tied)
    per = -(-len(ts) // shards)
    weight_map, header_bytes = {}, 0
    for n in range(shards):
        chunk = ts[n * per:(n + 1) * per]
        if not chunk:
            break
        name = "model.safetensors" if shards == 1 else f"model-{n + 1:05}-of-{shards:05}.safetensors"
        header_bytes += write_shard(os.path.join(directory, name), chunk)
        weight_map.update({t: name for t, _ in chunk})
    if shards > 1:
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return header_bytes


def time_runs(env, args, runs):
    """Wall times (ms, sorted) and the mean CPU time (user + system, ms) of each run."""
    times = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run([BIN, *args], env=env, capture_output=True)
        times.append((time.perf_counter() - start) * 1000)
        if out.returncode != 0:
            sys.exit(f"plan failed: {out.stderr.decode()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000 / runs
    times.sort()
    return times, cpu


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    if not os.access(BIN, os.X_OK):
        sys.exit("build first: make build")
    with tempfile.TemporaryDirectory() as root:
        # 8 of each: the 72B models take 4 GPUs each (32 GPUs), the 24 others share the
        # remaining 8 GPUs, so the packing runs too.
        models, header_bytes, files = [], 0, 0
        for arch in ARCHS:
            for i in range(8):
                name = f"{arch}-{i}"
                header_bytes += write_model(os.path.join(root, name), arch)
                files += ARCHS[arch][-1]
                params = f"--served-model-name {name}"
                if arch == "qwen2-72b":
                    params += " -tp 4"
                models.append({"model_path": name, "params": params})
        hub = [dict(m, model_path=f"org/{m['model_path']}") for m in models]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MODELMUX_", "MULTI_MODEL"))}
        # `plan` checks that the engine program exists (as `serve` would): the mock stands in.
        base.update(MODELMUX_GPUS="40x80GiB", MODELMUX_MODEL_ROOT=root, RUST_LOG="warn",
                    MODELMUX_ENGINE_CMD=os.path.join(os.path.dirname(BIN), "mock-vllm"))
        local = dict(base, MULTI_MODEL_CONFIG=json.dumps({"models": models}))
        remote = dict(base, MULTI_MODEL_CONFIG=json.dumps({"models": hub}), MODELMUX_GPUS="64x80GiB")
        plan = json.loads(subprocess.run([BIN, "plan", "--json"], env=local, capture_output=True, check=True).stdout)
        shared = sum(1 for m in plan["models"] if m["gpu_share"] is not None)
        print(f"32 models, {files} safetensors files, {header_bytes / 1e6:.1f} MB of headers; "
              f"{shared} models share GPUs; {runs} runs per target, each a new process; "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        print(f"{'target':<36} {'wall ms: min':>12} {'median':>7} {'p90':>7} {'max':>7} {'cpu ms':>7}")
        for label, env, args in [
            ("plan (32 local models)", local, ["plan"]),
            ("plan --json (32 local models)", local, ["plan", "--json"]),
            ("plan (32 Hugging Face ids, no files)", remote, ["plan"]),
        ]:
            t, cpu = time_runs(env, args, runs)
            p90 = t[min(len(t) - 1, int(len(t) * 0.9))]
            print(f"{label:<36} {t[0]:12.1f} {statistics.median(t):7.1f} {p90:7.1f} {t[-1]:7.1f} {cpu:7.1f}")


if __name__ == "__main__":
    main()
