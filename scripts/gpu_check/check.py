"""sis against transformers on random-weight checkpoints of real model shapes (scripts/gpu-check).

Subcommands:
  checkpoints  seeded random weights (numpy: the same bytes on every machine) for the real configs of
               all-MiniLM-L6-v2 and Qwen2.5-0.5B-Instruct, written as safetensors beside their tokenizers
               (Qwen gets a synthetic one whose tokens name their ids, `<t123>`, so sis's log-probability
               tokens are ids).
  references   transformers' answers on those checkpoints (needs torch): written to a JSON file, or
               computed inside `compare --live`.
  compare      starts sis on the checkpoints on a device and checks it: embeddings within 1e-3 cosine,
               prompt log-probabilities, greedy tokens equal alone and in a batch of 8 and equal to
               transformers' (sis's argmax along transformers' greedy path); `--bench` adds throughput.

`scripts/gpu-check run` runs them on the GPU (references live, bf16); `./scripts/test` runs `compare` on the
CPU against scripts/gpu_check/references.json (made once here by `references`, f32), so the script is
tested in CI. Only numpy and the standard library are needed without `--live`.
"""
import argparse
import concurrent.futures as cf
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
]
# Token-id prompts (Qwen2.5's ids: a chat turn, a sentence, digits, a greeting).
PROMPTS = [[151644, 872, 198, 3838, 374, 279, 6722, 315, 9625, 30, 151645, 198, 151644, 77091, 198],
           [785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13],
           [16, 11, 220, 17, 11, 220, 18, 11, 220, 19, 11],
           [9707, 11, 1879, 0, 358, 1079]]
STEPS = 12
FAILURES = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


# --- checkpoints -------------------------------------------------------------------------------------

def tensor_names(config, kind):
    """The parameter names and shapes transformers gives these configs (BERT and Qwen2 layouts)."""
    if kind == "bert":
        h, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
        names = {"embeddings.word_embeddings.weight": [config["vocab_size"], h],
                 "embeddings.position_embeddings.weight": [config["max_position_embeddings"], h],
                 "embeddings.token_type_embeddings.weight": [config["type_vocab_size"], h],
                 "embeddings.LayerNorm.weight": [h], "embeddings.LayerNorm.bias": [h],
                 "pooler.dense.weight": [h, h], "pooler.dense.bias": [h]}
        for i in range(layers):
            p = f"encoder.layer.{i}."
            for m in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]:
                names[p + m + ".weight"], names[p + m + ".bias"] = [h, h], [h]
            names[p + "attention.output.LayerNorm.weight"] = names[p + "attention.output.LayerNorm.bias"] = [h]
            names[p + "intermediate.dense.weight"], names[p + "intermediate.dense.bias"] = [f, h], [f]
            names[p + "output.dense.weight"], names[p + "output.dense.bias"] = [h, f], [h]
            names[p + "output.LayerNorm.weight"] = names[p + "output.LayerNorm.bias"] = [h]
        return names
    h, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    d = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * d
    names = {"model.embed_tokens.weight": [config["vocab_size"], h], "model.norm.weight": [h]}
    for i in range(layers):
        p = f"model.layers.{i}."
        names.update({p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
                      p + "self_attn.q_proj.weight": [h, h], p + "self_attn.q_proj.bias": [h],
                      p + "self_attn.k_proj.weight": [kv, h], p + "self_attn.k_proj.bias": [kv],
                      p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.v_proj.bias": [kv],
                      p + "self_attn.o_proj.weight": [h, h], p + "mlp.gate_proj.weight": [f, h],
                      p + "mlp.up_proj.weight": [f, h], p + "mlp.down_proj.weight": [h, f]})
    if not config.get("tie_word_embeddings"):
        names["lm_head.weight"] = [config["vocab_size"], h]
    return names


def random_tensor(name, shape, seed):
    """transformers' initialization: norm weights 1, everything else N(0, 0.02); seeded by name, so the
    same bytes on every machine."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if "norm" in name.lower() and name.endswith("weight"):
        return np.ones(shape, np.float32)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)


def write_safetensors(path, tensors, dtype):
    """A safetensors file of f32 arrays stored as `dtype` (F32, or BF16 by truncation)."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        data = array.tobytes() if dtype == "F32" else (array.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for blob in blobs:
            f.write(blob)


def synthetic_tokenizer(vocab):
    """A word-level tokenizer whose token i is `<ti>`: sis's log-probability tokens then name ids."""
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": {f"<t{i}>": i for i in range(vocab)}, "unk_token": "<t0>"}}


def checkpoints(minilm, work, seed=0):
    os.makedirs(work, exist_ok=True)
    out = os.path.join(work, "minilm")
    shutil.copytree(minilm, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    config = json.load(open(os.path.join(out, "config.json")))
    tensors = {n: random_tensor(n, s, seed) for n, s in tensor_names(config, "bert").items()}
    write_safetensors(os.path.join(out, "model.safetensors"), tensors, "F32")
    out = os.path.join(work, "qwen")
    os.makedirs(out, exist_ok=True)
    shutil.copy(os.path.join(HERE, "models", "qwen", "config.json"), out)
    config = json.load(open(os.path.join(out, "config.json")))
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(synthetic_tokenizer(config["vocab_size"]), f)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        # No chat template: a base model, served by /v1/completions.
        json.dump({"eos_token": "<t151645>", "bos_token": None}, f)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [151645, 151643]}, f)  # Qwen2.5-0.5B-Instruct's
    tensors = {n: random_tensor(n, s, seed) for n, s in tensor_names(config, "qwen2").items()}
    write_safetensors(os.path.join(out, "model.safetensors"), tensors, "BF16")
    print(f"random-weight checkpoints in {work}", flush=True)


# --- references (transformers) -----------------------------------------------------------------------

def references(work, device):
    import torch
    import transformers
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    minilm = os.path.join(work, "minilm")
    model = transformers.AutoModel.from_pretrained(minilm, torch_dtype=torch.float32).to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt").to(device)
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    vectors = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(work, "qwen"), torch_dtype=dtype)
    model = model.to(device).eval()
    chat = []
    for prompt in PROMPTS:
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(STEPS):  # greedy, one full forward per token (no cache: the plainest reference)
                logits = model(torch.tensor([ids], device=device)).logits[0].float()
                ids.append(int(logits[-1].argmax()))
            logits = model(torch.tensor([ids], device=device)).logits[0].float()
        logprobs = torch.log_softmax(logits, -1)
        top2 = logprobs[len(prompt) - 1:-1].topk(2).values
        chat.append({"prompt": prompt, "greedy": ids[len(prompt):],
                     "prompt_logprobs": logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist()[
                         :len(prompt) - 1],
                     "margins": (top2[:, 0] - top2[:, 1]).tolist()})
    return {"device": device, "dtype": str(dtype), "embeddings": vectors.float().cpu().tolist(), "chat": chat}


# --- sis ---------------------------------------------------------------------------------------------

def post(base, path, body, timeout=600):
    request = urllib.request.Request(base + path, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def start_sis(binary, work, device, port, log):
    roster = os.path.join(work, "roster.toml")
    with open(roster, "w") as f:
        for id_, kind in [("minilm", "embedding"), ("qwen", "chat")]:
            f.write(f'[[models]]\nid = "{id_}"\nkind = "{kind}"\npath = "{os.path.join(work, id_)}"\n'
                    f'device = "{device}"\n\n')
    env = dict(os.environ, SIS_CONFIG=roster, MODELS="minilm,qwen", MAX_CONCURRENT="64", MAX_QUEUE_SIZE="4096")
    if device == "cpu":
        env["SIS_CPU_KERNELS"] = "reference"  # the path GPUs run
    process = subprocess.Popen([binary, "serve", "--config", roster, "--host", "127.0.0.1", "--port", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if process.poll() is not None:
            sys.exit(f"sis exited during start-up; see {log.name}")
        try:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    health = json.loads(r.read())
            except urllib.error.HTTPError as unhealthy:  # 503 until every model is ready
                health = json.loads(unhealthy.read())
            states = {m: health["actors"].get(m, {}).get("state") for m in ["minilm", "qwen"]}
            if all(state == "ready" for state in states.values()):
                return process, base
            if "failed" in states.values() or len(health["actors"]) < 2:
                process.kill()
                sys.exit(f"a model failed to start ({states}); see {log.name}")
        except Exception:
            pass
        time.sleep(0.5)
    process.kill()
    sys.exit("sis did not become ready in 10 minutes")


def ids_of(tokens):
    return [int(t[2:-1]) if t.startswith("<t") and t.endswith(">") else None for t in tokens]


def compare(base, refs, tolerance):
    got = np.array([d["embedding"] for d in post(base, "/v1/embeddings", {"model": "minilm", "input": SENTENCES})["data"]])
    worst = 1 - float(min((got * np.array(refs["embeddings"])).sum(1)))
    check(worst < 1e-3, f"embeddings: cosine within 1e-3 of transformers (worst 1 - cos = {worst:.1e})")

    def complete(prompt, **extra):
        body = {"model": "qwen", "prompt": prompt, "max_tokens": STEPS, "temperature": 0, "logprobs": 0, **extra}
        return post(base, "/v1/completions", body)["choices"][0]["logprobs"]

    for i, ref in enumerate(refs["chat"]):
        prompt, greedy = ref["prompt"], ref["greedy"]
        # The prompt's log-probabilities (echo, nothing generated).
        scored = complete(prompt, max_tokens=0, echo=True)["token_logprobs"][1:]
        worst = float(np.abs(np.array(scored, float) - np.array(ref["prompt_logprobs"])).max())
        check(worst < tolerance, f"chat {i}: prompt log-probabilities within {tolerance} (worst {worst:.2e})")
        # sis's argmax at every step of transformers' greedy path (top-1 equals the chosen token),
        # except where transformers' own best two are closer than the tolerance.
        path = complete(prompt + greedy, max_tokens=0, echo=True, logprobs=1)
        tops, chosen = path["top_logprobs"][len(prompt):], path["token_logprobs"][len(prompt):]
        same = all(m < tolerance or abs(max(t.values()) - c) < 1e-6 for t, c, m in zip(tops, chosen, ref["margins"]))
        check(same, f"chat {i}: sis's greedy choice equals transformers' at each of {len(greedy)} steps")
        # sis's own greedy tokens: alone, in a batch of 8, and against transformers'.
        alone = ids_of(complete(prompt)["tokens"])
        with cf.ThreadPoolExecutor(8) as pool:
            company = ([prompt] + [r["prompt"] for r in refs["chat"]] * 2)[:8]
            batch = list(pool.map(lambda p: ids_of(complete(p)["tokens"]), company))
        check(batch[0] == alone, f"chat {i}: greedy tokens equal alone and in a batch of 8")
        check(agree(alone, greedy, ref["margins"], tolerance), f"chat {i}: greedy tokens equal transformers' ({alone})")


def agree(got, want, margins, tolerance):
    """Equal tokens up to the first near-tie (transformers' best two closer than `tolerance`), where
    either pick is right and the rest follows from it."""
    for g, w, m in zip(got, want, margins):
        if g != w or m < tolerance:
            return g == w or m < tolerance
    return len(got) == len(want)


def bench(base):
    texts = [f"{SENTENCES[i % len(SENTENCES)]} {i}" for i in range(32)]
    start = time.time()
    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: post(base, "/v1/embeddings", {"model": "minilm", "input": texts}), range(200)))
    print(f"embeddings: {200 * 32 / (time.time() - start):.0f} texts/s (200 requests x 32 texts, 8 in flight)")
    for concurrency in [1, 32]:
        def one(i):
            body = {"model": "qwen", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 128, "temperature": 0}
            return post(base, "/v1/completions", body)["usage"]["completion_tokens"]
        start = time.time()
        with cf.ThreadPoolExecutor(concurrency) as pool:
            tokens = sum(pool.map(one, range(max(4, concurrency * 2))))
        print(f"chat c{concurrency}: {tokens / (time.time() - start):.0f} tokens/s (Qwen2.5-0.5B shapes, up to 128 tokens)")


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("checkpoints")
    c.add_argument("--minilm", required=True, help="all-MiniLM-L6-v2's folder (config and tokenizer)")
    c.add_argument("--work", required=True)
    r = sub.add_parser("references")
    r.add_argument("--work", required=True)
    r.add_argument("--device", default="cpu")
    r.add_argument("--out", required=True)
    m = sub.add_parser("compare")
    m.add_argument("--work", required=True)
    m.add_argument("--sis", required=True)
    m.add_argument("--device", default="cpu", help="sis's device: cpu or cuda[:i]")
    m.add_argument("--references", help="a references file; without it, transformers runs here (--live)")
    m.add_argument("--bench", action="store_true")
    m.add_argument("--port", type=int, default=18088)
    args = parser.parse_args()
    if args.command == "checkpoints":
        return checkpoints(args.minilm, args.work)
    if args.command == "references":
        with open(args.out, "w") as f:
            json.dump(references(args.work, args.device), f)
        return
    if args.references:
        refs = json.load(open(args.references))
    else:
        refs = references(args.work, "cuda" if args.device.startswith("cuda") else "cpu")
    # f32 on both sides agrees to rounding; bf16 logits (std ~15) to about a tenth of a nat.
    tolerance = 0.25 if "bfloat16" in refs["dtype"] else 1e-2
    with open(os.path.join(args.work, "sis.log"), "w") as log:
        process, base = start_sis(args.sis, args.work, args.device, args.port, log)
        try:
            compare(base, refs, tolerance)
            if args.bench:
                bench(base)
        finally:
            process.terminate()
            process.wait()
    print(f"{len(FAILURES)} check(s) failed: {FAILURES}" if FAILURES else "all checks passed", flush=True)
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
