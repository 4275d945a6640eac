#!/usr/bin/env python3
"""Reference embeddings from sentence-transformers, computed once and committed as fixtures.

CI does not install PyTorch: the tests compare sis against the JSON files this script writes under
tests/fixtures/. Re-run it (in the peers' venv, `scripts/install-peers`) only when a model or the
sentences change:

    .peers/venv/bin/python scripts/references/embeddings.py NAME MODEL_DIR

NAME names the fixture (tests/fixtures/NAME.json); MODEL_DIR is the model folder as sis resolves it
(`sis models pull ID` prints it).
"""
import json
import pathlib
import sys

import sentence_transformers
import torch

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn, while the farmer's "
    "children watch from the old stone bridge and count the boats drifting slowly downstream.",
]


def main() -> None:
    name, model_dir = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = sentence_transformers.SentenceTransformer(model_dir, device="cpu")
    vectors = model.encode(SENTENCES, batch_size=1, normalize_embeddings=False, convert_to_numpy=True)
    out = {
        "source": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, "
        f"SentenceTransformer({name!r}).encode(batch_size=1)",
        "sentences": SENTENCES,
        "vectors": [[round(float(x), 6) for x in v] for v in vectors],
    }
    if "query" in model.prompts:
        # The model's query prompt (EmbeddingGemma's task prefix, Qwen3-Embedding's instruction).
        queries = model.encode(SENTENCES[:2], prompt_name="query", batch_size=1, convert_to_numpy=True)
        out["query_vectors"] = [[round(float(x), 6) for x in v] for v in queries]
    path = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / f"{name}.json"
    path.write_text(json.dumps(out, indent=None) + "\n")
    print(f"wrote {path} ({len(vectors)} vectors of {len(vectors[0])})")


if __name__ == "__main__":
    main()
