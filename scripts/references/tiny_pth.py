#!/usr/bin/env python3
"""A tiny random BERT saved the old way (`pytorch_model.bin`, a torch pickle), with reference vectors
from `transformers`, computed once and committed under tests/fixtures/tiny-bert-pth/.

Older Hub repos ship only pytorch_model.bin; this checkpoint proves sis reads it through the same
path as safetensors. It uses all-MiniLM-L6-v2's vocabulary (the test links that model's
tokenizer.json beside it), so it stays small: width 8, two layers.

    .peers/venv/bin/python scripts/references/tiny_pth.py MINILM_DIR
"""
import json
import pathlib
import sys

import tokenizers
import torch
import transformers

SENTENCES = ["A man is eating food.", "A man is riding a horse.", "Old checkpoints still load."]


def main() -> None:
    minilm = pathlib.Path(sys.argv[1])
    out = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny-bert-pth"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=64,
    )
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    model.config.to_json_file(out / "config.json")
    # What `save_pretrained` wrote before safetensors: the state dict as a torch pickle (zip format).
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    tokenizer = tokenizers.Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tokenizer.no_padding()
    vectors = []
    with torch.no_grad():
        for text in SENTENCES:
            ids = torch.tensor([tokenizer.encode(text).ids])
            hidden = model(input_ids=ids).last_hidden_state[0]
            v = torch.nn.functional.normalize(hidden.mean(0), dim=0)
            vectors.append([round(float(x), 6) for x in v])
    (out / "reference.json").write_text(json.dumps({
        "source": f"transformers {transformers.__version__} BertModel, mean pooling, L2 normalize",
        "sentences": SENTENCES,
        "vectors": vectors,
    }) + "\n")
    print(sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    main()
