"""The device half of scripts/gpu-check: random-weight checkpoints of real model shapes, sis against
transformers on the same device, then throughput.

Run by `scripts/gpu-check run` (on the GPU machine: `--device cuda`; here: `--device cpu`, the same
comparisons on the CPU). Needs torch, transformers, safetensors and numpy; talks to sis over HTTP with
the standard library only (the GPU machine has no network and no extra packages).
"""
import argparse
import concurrent.futures as cf
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import wave

import numpy as np
import torch
import transformers

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
# Token ids of prompts (inside Qwen2.5's vocabulary): the comparisons need no tokenizer in Python.
PROMPTS = [[151644, 872, 198, 3838, 374, 279, 6722, 315, 9625, 30, 151645, 198, 151644, 77091, 198],
           [785, 3974, 13876, 38835, 34208, 916, 279, 15678, 5562, 13],
           [16, 11, 220, 17, 11, 220, 18, 11, 220, 19, 11],
           [9707, 11, 1879, 0, 358, 1079]]
FAILURES = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


def post(base, path, body, timeout=600):
    request = urllib.request.Request(base + path, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def make_checkpoints(models, out, device):
    """Random weights (seeded) from the real configs, saved as safetensors beside the real tokenizers."""
    torch.manual_seed(0)
    made = {}
    specs = {
        "minilm": (transformers.AutoModel, torch.float32),
        "qwen": (transformers.AutoModelForCausalLM, torch.bfloat16),
        "whisper": (transformers.WhisperForConditionalGeneration, torch.float32),
    }
    for name, (cls, dtype) in specs.items():
        src, dst = os.path.join(models, name), os.path.join(out, name)
        shutil.copytree(src, dst, dirs_exist_ok=True)
        config = transformers.AutoConfig.from_pretrained(src)
        model = cls.from_config(config, torch_dtype=dtype)
        if name == "qwen":
            # Initialized at std 0.02 every logit is near zero and greedy picks are coin flips between
            # near-ties; a wider output layer gives margins that both sides resolve alike.
            with torch.no_grad():
                model.get_output_embeddings().weight.normal_(0, 0.5)
        model.save_pretrained(dst, safe_serialization=True)
        made[name] = model.to(device).eval()
    return made


def start_sis(binary, checkpoints, device, port, log):
    roster = os.path.join(checkpoints, "roster.toml")
    with open(roster, "w") as f:
        for id_, kind, folder in [("minilm", "embedding", "minilm"), ("qwen", "chat", "qwen"),
                                  ("whisper", "speech", "whisper")]:
            f.write(f'[[models]]\nid = "{id_}"\nkind = "{kind}"\npath = "{os.path.join(checkpoints, folder)}"\n'
                    f'device = "{device}"\n\n')
    env = dict(os.environ, SIS_ROSTER=roster, MODELS="minilm,qwen,whisper", PORT=str(port),
               HOST="127.0.0.1", MAX_CONCURRENT="64", MAX_QUEUE_SIZE="4096", CHAT_BATCH_MAX_SIZE="64",
               AUDIO_MAX_CONCURRENT="4", AUTO_DOWNLOAD_MODELS="0")
    if device == "cpu":
        env["SIS_CPU_KERNELS"] = "reference"  # the path GPUs run
    process = subprocess.Popen([binary, "serve", "--roster", roster, "--port", str(port)], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            sys.exit(f"sis exited during start-up; see {log.name}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                health = json.loads(r.read())
            if all(health["actors"][m]["state"] == "ready" for m in ["minilm", "qwen", "whisper"]):
                return process, base
        except Exception:
            pass
        time.sleep(0.5)
    sys.exit("sis did not become ready in 5 minutes")


def compare_embeddings(model, base, device):
    tokenizer = transformers.AutoTokenizer.from_pretrained(model.name_or_path or "")
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt").to(device)
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    want = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1).float().cpu().numpy()
    got = np.array([d["embedding"] for d in post(base, "/v1/embeddings", {"model": "minilm", "input": SENTENCES})["data"]])
    worst = 1 - float(min((got * want).sum(1)))
    check(worst < 1e-3, f"embeddings: cosine within 1e-3 of transformers (worst 1 - cos = {worst:.2e})")


def greedy_reference(model, prompt, steps, device):
    """transformers' greedy tokens, and each step's margin between its best two logits."""
    ids = torch.tensor([prompt], device=device)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=steps, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    tokens = out.sequences[0, len(prompt):].tolist()
    margins = [float(l[0].float().topk(2).values.diff().abs()) for l in out.logits]
    return tokens, margins


def agree(got, want, margins, tolerance):
    """Equal up to the first near-tie (margin below `tolerance`), where either pick is right."""
    for g, w, m in zip(got, want, margins):
        if g != w:
            return m < tolerance
        if m < tolerance:
            return True
    return len(got) == len(want)


def compare_chat(model, base, device):
    steps, tolerance = 16, 0.05
    # Prompt logits: sis's echoed log-probabilities against transformers' log-softmax.
    prompt = PROMPTS[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt], device=device)).logits[0].float()
    want = torch.log_softmax(logits, -1)[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])].cpu().numpy()
    body = {"model": "qwen", "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
    got = np.array(post(base, "/v1/completions", body)["choices"][0]["logprobs"]["token_logprobs"][1:], dtype=float)
    worst = float(np.abs(got - want).max())
    check(worst < 0.1, f"chat: prompt log-probabilities within 0.1 of transformers (worst {worst:.3f}, bf16)")
    # Greedy tokens: alone, then with 7 others in the batch, and against transformers.
    def complete(prompt):
        body = {"model": "qwen", "prompt": prompt, "max_tokens": steps, "temperature": 0, "logprobs": 0}
        return post(base, "/v1/completions", body)["choices"][0]["logprobs"]["tokens"]
    for i, prompt in enumerate(PROMPTS):
        want, margins = greedy_reference(model, prompt, steps, device)
        alone = complete(prompt)
        with cf.ThreadPoolExecutor(8) as pool:
            batched = list(pool.map(complete, [prompt] + PROMPTS + PROMPTS[:3]))[0]
        check(alone == batched, f"chat: prompt {i} greedy tokens equal alone and in a batch of 8")
        ids = [int(t.split(":")[1]) if t.startswith("token_id:") else None for t in alone]
        if None in ids:
            # sis shows tokens as text; map them back through the served tokenizer's ids.
            ids = post(base, "/tokenize", {"model": "qwen", "prompt": "".join(alone)}).get("tokens", ids)
        check(agree(ids, want, margins, tolerance),
              f"chat: prompt {i} greedy tokens equal transformers' up to a near-tie (< {tolerance})")


def clip_samples(path):
    with wave.open(path) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
        return data, w.getnframes() / w.getframerate()


def transcribe(base, path):
    boundary = "gpucheckboundary"
    with open(path, "rb") as f:
        audio = f.read()
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'.encode(),
             f'--{boundary}\r\nContent-Disposition: form-data; name="response_format"\r\n\r\nverbose_json\r\n'.encode(),
             f'--{boundary}\r\nContent-Disposition: form-data; name="temperature"\r\n\r\n0\r\n'.encode(),
             f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="clip.wav"\r\n'
             f'Content-Type: audio/wav\r\n\r\n'.encode() + audio + b"\r\n", f"--{boundary}--\r\n".encode()]
    request = urllib.request.Request(base + "/v1/audio/transcriptions", b"".join(parts),
                                     {"content-type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def compare_whisper(model, base, clip, device):
    samples, _ = clip_samples(clip)
    extractor = transformers.WhisperFeatureExtractor()
    features = extractor(samples, sampling_rate=16000, return_tensors="pt").input_features.to(device)
    prefix = [model.config.decoder_start_token_id] + [t for _, t in (model.generation_config.forced_decoder_ids or [])]
    with torch.no_grad():
        out = model.generate(features, max_new_tokens=24, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, suppress_tokens=None, begin_suppress_tokens=None)
    got = transcribe(base, clip)
    tokens = [t for s in got.get("segments", []) for t in s.get("tokens", [])]
    want = [t for t in out.sequences[0].tolist() if t < model.config.eos_token_id][: len(tokens)]
    check(len(tokens) > 0 and tokens[: len(want)] == want[: len(tokens)],
          f"whisper: tokens on the clip equal transformers' ({len(tokens)} tokens; prefix {prefix})")


def throughput(base, clip):
    texts = [SENTENCES[i % len(SENTENCES)] + f" {i}" for i in range(32)]
    start = time.time()
    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: post(base, "/v1/embeddings", {"model": "minilm", "input": texts}), range(200)))
    print(f"embeddings: {200 * 32 / (time.time() - start):.0f} texts/s (200 requests x 32, 8 at a time)")
    for concurrency in [1, 32]:
        def one(i):
            body = {"model": "qwen", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 128, "temperature": 0,
                    "ignore_eos": True}
            return post(base, "/v1/completions", body)["usage"]["completion_tokens"]
        start = time.time()
        with cf.ThreadPoolExecutor(concurrency) as pool:
            tokens = sum(pool.map(one, range(concurrency * 2)))
        print(f"chat c{concurrency}: {tokens / (time.time() - start):.0f} tokens/s (bf16, 128 tokens each)")
    _, seconds = clip_samples(clip)
    start = time.time()
    with cf.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: transcribe(base, clip), range(16)))
    print(f"whisper c4: {16 * seconds / (time.time() - start):.0f}x real time (16 clips of {seconds:.1f} s)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sis", required=True)
    parser.add_argument("--models", required=True, help="folders minilm, qwen, whisper: configs and tokenizers")
    parser.add_argument("--clip", required=True)
    parser.add_argument("--work", default="/tmp/sis-gpu-check")
    parser.add_argument("--port", type=int, default=18088)
    args = parser.parse_args()
    torch_device = "cuda" if args.device.startswith("cuda") else "cpu"
    os.makedirs(args.work, exist_ok=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}", flush=True)
    if torch_device == "cuda":
        print(torch.cuda.get_device_name(0), flush=True)
    made = make_checkpoints(args.models, args.work, torch_device)
    made["minilm"].name_or_path = os.path.join(args.work, "minilm")
    with open(os.path.join(args.work, "sis.log"), "w") as log:
        process, base = start_sis(args.sis, args.work, args.device, args.port, log)
        try:
            for name, run in [("embeddings", lambda: compare_embeddings(made["minilm"], base, torch_device)),
                              ("chat", lambda: compare_chat(made["qwen"], base, torch_device)),
                              ("whisper", lambda: compare_whisper(made["whisper"], base, args.clip, torch_device))]:
                try:
                    run()
                except Exception as e:  # one capability's failure does not hide the others'
                    check(False, f"{name}: {type(e).__name__}: {e}")
            throughput(base, args.clip)
        finally:
            process.terminate()
            process.wait()
    print(f"{len(FAILURES)} failed" if FAILURES else "all checks passed")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
