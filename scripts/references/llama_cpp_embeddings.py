#!/usr/bin/env python3
"""Reference embeddings of a GGUF embedding model from llama.cpp's own server, computed once and
committed as tests/fixtures/NAME.json (CI builds no llama.cpp).

nomic-embed-text's own code is remote code on the Hub, which our machines cannot reach; llama.cpp
reads the same GGUF file independently. Build llama-server with `scripts/install-peers`, then:

    .peers/venv/bin/python scripts/references/llama_cpp_embeddings.py NAME GGUF_FILE
"""
import json
import pathlib
import subprocess
import sys
import time
import urllib.request

SENTENCES = [
    "search_query: A man is eating food.",
    "search_query: A man is eating a piece of bread.",
    "search_query: A man is riding a horse.",
    "search_document: The quick brown fox jumps over the lazy dog near the riverbank at dawn, while the "
    "farmer's children watch from the old stone bridge and count the boats drifting slowly downstream.",
]
PORT = 8931


def post(path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def main() -> None:
    name, gguf = sys.argv[1], sys.argv[2]
    root = pathlib.Path(__file__).resolve().parents[2]
    server = subprocess.Popen(
        [str(root / ".peers" / "llama-server"), "-m", gguf, "--embedding", "--pooling", "mean", "-c", "2048",
         "-b", "2048", "-ub", "2048", "--port", str(PORT), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        vectors, tokens = [], []
        for text in SENTENCES:
            tokens.append(post("/tokenize", {"content": text, "add_special": True})["tokens"])
            vectors.append(post("/v1/embeddings", {"input": text})["data"][0]["embedding"])
    finally:
        server.terminate()
    version = (root / ".peers" / "llama-cpp-python.txt").read_text().strip()
    out = {
        "source": f"llama.cpp's llama-server ({version}), --pooling mean, /v1/embeddings (normalized)",
        "sentences": SENTENCES,
        "tokens": tokens,
        "vectors": [[round(float(x), 6) for x in v] for v in vectors],
    }
    path = root / "tests" / "fixtures" / f"{name}.json"
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path}: {[len(t) for t in tokens]} tokens")


if __name__ == "__main__":
    main()
