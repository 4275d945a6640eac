#!/usr/bin/env python3
"""A tiny random Qwen3 checkpoint in the FP8 layout of Qwen's `…-FP8` repos (linear weights as
float8 e4m3 in blocks, each block's `weight_scale_inv`; `quantization_config.quant_method = "fp8"`),
with the logits `transformers` computes from the same weights dequantized, made once and committed
under tests/fixtures/tiny-qwen3-fp8/. Blocks are 16 × 16 here so that a tiny model has several.

    .peers/venv/bin/python scripts/references/tiny_fp8.py
"""
import json
import pathlib

import safetensors.torch
import torch
import transformers

BLOCK = 16
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantize(w: torch.Tensor):
    out, inp = w.shape
    rows, cols = -(-out // BLOCK), -(-inp // BLOCK)
    scale = torch.zeros(rows, cols)
    q = torch.zeros_like(w)
    for r in range(rows):
        for c in range(cols):
            block = w[r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK]
            s = block.abs().max().clamp(min=1e-12) / 448.0
            scale[r, c] = s
            q[r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK] = block / s
    return q.to(torch.float8_e4m3fn), scale


def main() -> None:
    out = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny-qwen3-fp8"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(9)
    config = transformers.Qwen3Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, initializer_range=0.3,
        tie_word_embeddings=False,
    )
    model = transformers.Qwen3ForCausalLM(config).eval()
    tensors = {}
    for name, value in model.state_dict().items():
        if any(f".{l}.weight" in name for l in LINEAR):
            q, scale = quantize(value)
            tensors[name] = q.contiguous()
            tensors[name + "_scale_inv"] = scale.contiguous()
            # The reference runs on exactly the values the checkpoint holds.
            rows, cols = value.shape
            per_weight = scale.repeat_interleave(BLOCK, 0)[:rows].repeat_interleave(BLOCK, 1)[:, :cols]
            value.copy_(q.float() * per_weight)
        else:
            tensors[name] = value.contiguous()
    safetensors.torch.save_file(tensors, out / "model.safetensors")
    config_json = config.to_dict()
    config_json["architectures"] = ["Qwen3ForCausalLM"]
    config_json["quantization_config"] = {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [BLOCK, BLOCK],
    }
    (out / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
    torch.manual_seed(4)
    ids = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    (out / "reference.json").write_text(json.dumps({
        "source": f"transformers {transformers.__version__} Qwen3ForCausalLM on the dequantized weights",
        "ids": ids[0].tolist(),
        "last_logits": [round(float(x), 5) for x in logits[-1]],
    }) + "\n")
    print(sorted(p.name for p in out.iterdir()), float(logits[-1].max()))


if __name__ == "__main__":
    main()
