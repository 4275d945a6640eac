#!/usr/bin/env python3
"""A tiny random Qwen3 decoder laid out as Qwen3-Embedding is (a `Qwen3Model`, last-token pooling,
normalized), with the vectors `transformers` computes for a few texts, made once and committed under
tests/fixtures/tiny-qwen3-embedding/. No Qwen3-Embedding weights are reachable from our machines; this
checks sis's decoder embeddings (causal attention, the final norm, the last token's state).

It uses all-MiniLM-L6-v2's vocabulary (the test links that model's tokenizer.json beside it, whose
closing [SEP] plays the part of Qwen3-Embedding's appended <|endoftext|>), so it stays small.

    .peers/venv/bin/python scripts/references/tiny_qwen3_embedding.py MINILM_DIR
"""
import json
import pathlib
import sys

import tokenizers
import torch
import transformers

SENTENCES = ["A man is eating food.", "A man is riding a horse.", "Decoders embed with their last token."]


def main() -> None:
    minilm = pathlib.Path(sys.argv[1])
    out = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny-qwen3-embedding"
    torch.manual_seed(21)
    config = transformers.Qwen3Config(
        vocab_size=30522, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=4, max_position_embeddings=128, initializer_range=0.5,
        tie_word_embeddings=True,
    )
    model = transformers.Qwen3Model(config).eval()
    model.save_pretrained(out)
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], indent=2) + "\n")
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 8, "pooling_mode_lasttoken": True, "pooling_mode_mean_tokens": False}) + "\n")
    tokenizer = tokenizers.Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tokenizer.no_padding()
    vectors = []
    with torch.no_grad():
        for text in SENTENCES:
            ids = torch.tensor([tokenizer.encode(text).ids])
            last = model(input_ids=ids).last_hidden_state[0, -1]
            vectors.append([round(float(x), 6) for x in torch.nn.functional.normalize(last, dim=0)])
    (out / "reference.json").write_text(json.dumps({
        "source": f"transformers {transformers.__version__} Qwen3Model, last token, L2 normalize",
        "sentences": SENTENCES,
        "vectors": vectors,
    }) + "\n")
    print(sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    main()
