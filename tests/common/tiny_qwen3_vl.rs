//! A tiny, randomly initialised Qwen3-VL checkpoint in the Hub layout: the Hub's tensor names and
//! config keys at toy sizes, a byte-level BPE tokenizer with the Qwen vision special tokens, the
//! processor config and a Qwen3-VL-style chat template. No Qwen3-VL weights are reachable from CI,
//! so this proves loading, preprocessing, image tokens in the prompt and the HTTP path; it says
//! nothing about answer quality.

use candle_core::{DType, Device, Tensor};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

/// Patch side of the tiny model's processor.
pub const PATCH: usize = 16;
/// Patches merged per side.
pub const MERGE: usize = 2;

const TEXT_HIDDEN: usize = 64;
const TEXT_LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const FFN: usize = 128;
const VISION_HIDDEN: usize = 32;
const VISION_HEADS: usize = 2;
const VISION_DEPTH: usize = 2;
const VISION_FFN: usize = 64;
const POSITIONS: usize = 16;

/// The special tokens after the 256 byte tokens, in id order.
const SPECIALS: [&str; 7] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
];
const VOCAB: usize = 272;

/// Language tokens of an image of `height × width` pixels that needs no resizing (multiples of 32).
pub fn image_tokens(height: usize, width: usize) -> usize {
    (height / PATCH) * (width / PATCH) / (MERGE * MERGE)
}

/// Writes the checkpoint into `dir`.
pub fn write(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    write_weights(dir);
    let id = |name: &str| 256 + SPECIALS.iter().position(|s| *s == name).unwrap();
    let config = json!({
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "image_token_id": id("<|image_pad|>"),
        "video_token_id": id("<|video_pad|>"),
        "vision_start_token_id": id("<|vision_start|>"),
        "vision_end_token_id": id("<|vision_end|>"),
        "tie_word_embeddings": true,
        "text_config": {
            "model_type": "qwen3_vl_text",
            "hidden_size": TEXT_HIDDEN, "intermediate_size": FFN, "num_hidden_layers": TEXT_LAYERS,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
            "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "vocab_size": VOCAB, "tie_word_embeddings": true,
            "rope_scaling": { "mrope_interleaved": true, "mrope_section": [4, 2, 2], "rope_type": "default" },
        },
        "vision_config": {
            "model_type": "qwen3_vl", "depth": VISION_DEPTH, "hidden_size": VISION_HIDDEN,
            "intermediate_size": VISION_FFN, "num_heads": VISION_HEADS, "in_channels": 3,
            "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": 2,
            "out_hidden_size": TEXT_HIDDEN, "num_position_embeddings": POSITIONS,
            "deepstack_visual_indexes": [0], "hidden_act": "gelu_pytorch_tanh",
        },
    });
    write_json(dir, "config.json", &config);
    write_json(
        dir,
        "preprocessor_config.json",
        &json!({
            "patch_size": PATCH, "merge_size": MERGE, "temporal_patch_size": 2,
            "size": { "shortest_edge": 1024, "longest_edge": 1024 * 1024 },
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "image_processor_type": "Qwen2VLImageProcessorFast",
        }),
    );
    write_json(dir, "tokenizer.json", &tokenizer());
    // The shape of Qwen3-VL's template: image parts become <|vision_start|><|image_pad|><|vision_end|>.
    let template = "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\n' }}\
        {%- if message.content is string %}{{- message.content }}{%- else %}\
        {%- for content in message.content %}\
        {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}\
        {{- '<|vision_start|><|image_pad|><|vision_end|>' }}\
        {%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}\
        {{- '<|im_end|>\n' }}{%- endfor %}\
        {%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}";
    write_json(
        dir,
        "tokenizer_config.json",
        &json!({ "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": null }),
    );
    write_json(dir, "chat_template.json", &json!({ "chat_template": template }));
}

fn write_json(dir: &Path, name: &str, value: &serde_json::Value) {
    std::fs::write(dir.join(name), serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// A byte-level BPE with one token per byte (GPT-2's byte-to-character table) and no merges.
fn tokenizer() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
        let c = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
        vocab.insert(c.to_string(), json!(b));
    }
    let added: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({ "id": 256 + i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": true })
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true },
        "post_processor": null,
        "decoder": { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true },
        "model": { "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                   "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": [] },
    })
}

fn write_weights(dir: &Path) {
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut random = |name: String, shape: &[usize]| {
        t.insert(name, Tensor::randn(0f32, 0.05, shape, &Device::Cpu).unwrap());
    };
    let v = "model.visual";
    random(format!("{v}.patch_embed.proj.weight"), &[VISION_HIDDEN, 3, 2, PATCH, PATCH]);
    random(format!("{v}.patch_embed.proj.bias"), &[VISION_HIDDEN]);
    random(format!("{v}.pos_embed.weight"), &[POSITIONS, VISION_HIDDEN]);
    for i in 0..VISION_DEPTH {
        let b = format!("{v}.blocks.{i}");
        random(format!("{b}.attn.qkv.weight"), &[3 * VISION_HIDDEN, VISION_HIDDEN]);
        random(format!("{b}.attn.qkv.bias"), &[3 * VISION_HIDDEN]);
        random(format!("{b}.attn.proj.weight"), &[VISION_HIDDEN, VISION_HIDDEN]);
        random(format!("{b}.attn.proj.bias"), &[VISION_HIDDEN]);
        random(format!("{b}.mlp.linear_fc1.weight"), &[VISION_FFN, VISION_HIDDEN]);
        random(format!("{b}.mlp.linear_fc1.bias"), &[VISION_FFN]);
        random(format!("{b}.mlp.linear_fc2.weight"), &[VISION_HIDDEN, VISION_FFN]);
        random(format!("{b}.mlp.linear_fc2.bias"), &[VISION_HIDDEN]);
    }
    let merged = VISION_HIDDEN * MERGE * MERGE;
    for m in [format!("{v}.merger"), format!("{v}.deepstack_merger_list.0")] {
        random(format!("{m}.linear_fc1.weight"), &[merged, merged]);
        random(format!("{m}.linear_fc1.bias"), &[merged]);
        random(format!("{m}.linear_fc2.weight"), &[TEXT_HIDDEN, merged]);
        random(format!("{m}.linear_fc2.bias"), &[TEXT_HIDDEN]);
    }
    let l = "model.language_model";
    random(format!("{l}.embed_tokens.weight"), &[VOCAB, TEXT_HIDDEN]);
    for i in 0..TEXT_LAYERS {
        let b = format!("{l}.layers.{i}");
        random(format!("{b}.self_attn.q_proj.weight"), &[HEADS * HEAD_DIM, TEXT_HIDDEN]);
        random(format!("{b}.self_attn.k_proj.weight"), &[KV_HEADS * HEAD_DIM, TEXT_HIDDEN]);
        random(format!("{b}.self_attn.v_proj.weight"), &[KV_HEADS * HEAD_DIM, TEXT_HIDDEN]);
        random(format!("{b}.self_attn.o_proj.weight"), &[TEXT_HIDDEN, HEADS * HEAD_DIM]);
        random(format!("{b}.mlp.gate_proj.weight"), &[FFN, TEXT_HIDDEN]);
        random(format!("{b}.mlp.up_proj.weight"), &[FFN, TEXT_HIDDEN]);
        random(format!("{b}.mlp.down_proj.weight"), &[TEXT_HIDDEN, FFN]);
    }
    let ones = |n: usize| Tensor::ones(n, DType::F32, &Device::Cpu).unwrap();
    let zeros = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
    for i in 0..TEXT_LAYERS {
        let b = format!("{l}.layers.{i}");
        t.insert(format!("{b}.input_layernorm.weight"), ones(TEXT_HIDDEN));
        t.insert(format!("{b}.post_attention_layernorm.weight"), ones(TEXT_HIDDEN));
        t.insert(format!("{b}.self_attn.q_norm.weight"), ones(HEAD_DIM));
        t.insert(format!("{b}.self_attn.k_norm.weight"), ones(HEAD_DIM));
    }
    t.insert(format!("{l}.norm.weight"), ones(TEXT_HIDDEN));
    for i in 0..VISION_DEPTH {
        for n in ["norm1", "norm2"] {
            t.insert(format!("{v}.blocks.{i}.{n}.weight"), ones(VISION_HIDDEN));
            t.insert(format!("{v}.blocks.{i}.{n}.bias"), zeros(VISION_HIDDEN));
        }
    }
    t.insert(format!("{v}.merger.norm.weight"), ones(VISION_HIDDEN));
    t.insert(format!("{v}.merger.norm.bias"), zeros(VISION_HIDDEN));
    t.insert(format!("{v}.deepstack_merger_list.0.norm.weight"), ones(merged));
    t.insert(format!("{v}.deepstack_merger_list.0.norm.bias"), zeros(merged));
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
}
