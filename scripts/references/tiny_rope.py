#!/usr/bin/env python3
"""Tiny random Llama checkpoints with each RoPE scaling Hub configs use (llama3, linear, yarn) and the
logits `transformers` computes for one token sequence that runs well past the original context,
made once and committed under tests/fixtures/tiny-llama-rope/. No Llama 3 weights are reachable from
our machines; these check sis's rotary frequencies where the scalings differ.

    .peers/venv/bin/python scripts/references/tiny_rope.py
"""
import json
import pathlib

import torch
import transformers

SCALINGS = {
    "llama3": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "linear": {"rope_type": "linear", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
}
LENGTH = 40
CHECKED = [0, 15, 16, 20, 27, 33, 39]


def main() -> None:
    root = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny-llama-rope"
    torch.manual_seed(5)
    ids = torch.randint(0, 64, (1, LENGTH))
    for name, scaling in SCALINGS.items():
        torch.manual_seed(3)
        config = transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0, rope_scaling=scaling,
            tie_word_embeddings=False, initializer_range=0.3, rms_norm_eps=1e-5,
        )
        model = transformers.LlamaForCausalLM(config).eval()
        out = root / name
        model.save_pretrained(out)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        (out / "reference.json").write_text(json.dumps({
            "source": f"transformers {transformers.__version__} LlamaForCausalLM, rope_scaling {scaling}",
            "ids": ids[0].tolist(),
            "positions": CHECKED,
            "logits": [[round(float(x), 5) for x in logits[p]] for p in CHECKED],
        }) + "\n")
        print(name, [round(float(logits[p].max()), 3) for p in CHECKED])


if __name__ == "__main__":
    main()
