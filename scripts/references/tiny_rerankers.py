#!/usr/bin/env python3
"""Tiny random cross-encoders (BERT and XLM-RoBERTa `…ForSequenceClassification`, one label) with the
logits `transformers` computes for a few (query, document) pairs, made once and committed under
tests/fixtures/tiny-rerank-{bert,xlmr}/. No reranker weights are reachable from our machines; these
check sis's pair encoding (token types), the two classification heads and RoBERTa's positions.

They use all-MiniLM-L6-v2's vocabulary (the test links its tokenizer.json beside them), so they stay
small: width 8, two layers, weights drawn wide enough (std 0.5) that the logits spread.

    .peers/venv/bin/python scripts/references/tiny_rerankers.py MINILM_DIR
"""
import json
import pathlib
import sys

import tokenizers
import torch
import transformers

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "The Eiffel Tower was finished in 1889.",
    "Bananas are rich in potassium.",
    "France borders Belgium, Germany, Switzerland, Italy and Spain.",
]


def build(kind: str):
    common = dict(vocab_size=30522, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, initializer_range=0.5,
                  intermediate_size=16, num_labels=1)
    if kind == "bert":
        config = transformers.BertConfig(max_position_embeddings=128, **common)
        return transformers.BertForSequenceClassification(config)
    config = transformers.XLMRobertaConfig(max_position_embeddings=130, type_vocab_size=1, pad_token_id=1, **common)
    return transformers.XLMRobertaForSequenceClassification(config)


def main() -> None:
    minilm = pathlib.Path(sys.argv[1])
    tokenizer = tokenizers.Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tokenizer.no_padding()
    fixtures = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"
    for seed, kind in enumerate(["bert", "xlmr"]):
        torch.manual_seed(11 + seed)
        model = build(kind).eval()
        out = fixtures / f"tiny-rerank-{kind}"
        model.save_pretrained(out)
        logits = []
        with torch.no_grad():
            for document in DOCUMENTS:
                encoding = tokenizer.encode(QUERY, document)
                ids = torch.tensor([encoding.ids])
                types = torch.tensor([encoding.type_ids]) if kind == "bert" else torch.zeros_like(ids)
                logits.append(round(float(model(input_ids=ids, token_type_ids=types).logits[0, 0]), 6))
        (out / "reference.json").write_text(json.dumps({
            "source": f"transformers {transformers.__version__} {type(model).__name__}, logits",
            "query": QUERY,
            "documents": DOCUMENTS,
            "logits": logits,
        }) + "\n")
        print(kind, logits)


if __name__ == "__main__":
    main()
