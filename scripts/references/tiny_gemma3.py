#!/usr/bin/env python3
"""A tiny random Gemma 3 chat model (`Gemma3ForCausalLM`, the layout of gemma-3-1b-it: sliding-window
and global layers with their own rotary bases, linear RoPE scaling on the global ones, Q/K norms,
pre/post norms around attention and feed-forward, GeGLU, √hidden-scaled embeddings) with a small
SentencePiece tokenizer laid out as Gemma's (pad 0, eos 1, bos 2, unk 3, `<start_of_turn>`,
`<end_of_turn>`, no dummy prefix, no byte pieces) and Gemma 3's chat template; its GGUF made by llama.cpp's own
converter; and what `transformers` computes: logits of one token sequence well past the sliding
window, and the greedy reply to a chat. Made once and committed under tests/fixtures/tiny-gemma3/.
No Gemma 3 chat weights are reachable from our machines.

    .peers/venv/bin/python scripts/references/tiny_gemma3.py LLAMA_CPP_SOURCE

LLAMA_CPP_SOURCE is llama.cpp's tree, e.g. the copy vendored in llama-cpp-python's source package
(`pip download --no-deps --no-binary llama-cpp-python llama-cpp-python`, then vendor/llama.cpp).
"""
import io
import json
import pathlib
import subprocess
import sys

import sentencepiece as spm
import torch
import transformers

CORPUS = """The quick brown fox jumps over the lazy dog.
Paris is the capital of France, and Berlin is the capital of Germany.
What is the capital of France? The capital of France is Paris.
Tokenizers split text into pieces; rare words fall back to bytes.
She sells sea shells by the sea shore, where the waves are cold.
A journey of a thousand miles begins with a single step.
""" * 20

TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]
LENGTH = 40
CHECKED = [0, 7, 8, 15, 16, 23, 31, 39]
REPLY_TOKENS = 12
# Ids up to this are pad, eos, bos, unk, mask and the turn markers.
SPECIAL = 6


def main() -> None:
    llama_cpp = pathlib.Path(sys.argv[1]).resolve()
    out = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny-gemma3"
    out.mkdir(parents=True, exist_ok=True)

    model_proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()), model_writer=model_proto, model_type="bpe",
        vocab_size=300, byte_fallback=False, character_coverage=1.0, split_digits=True, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>", "\n"],
    )
    (out / "tokenizer.model").write_bytes(model_proto.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model_proto.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
    }))
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(out)

    config = transformers.Gemma3TextConfig(
        vocab_size=sp.get_piece_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8, max_position_embeddings=128,
        query_pre_attn_scalar=16, rope_scaling={"rope_type": "linear", "factor": 8.0}, initializer_range=0.3,
        rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=[1, sp.piece_to_id("<end_of_turn>")],
    )
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    assert sp.unk_id() not in prompt_ids[0].tolist(), "the corpus must cover the prompt"
    # The first seed whose greedy reply is not one token repeated (random models like to repeat
    # their input, the more so with tied embeddings: untied here, as some Gemma fine-tunes are). The
    # vocabulary has no byte pieces (Gemma's has; the SentencePiece fixture covers them), so that any
    # reply is whole characters, and no special token, so that the served text can be compared as it is.
    for seed in range(100):
        torch.manual_seed(seed)
        model = transformers.Gemma3ForCausalLM(config).eval()
        # Gemma's norms scale by 1 + weight and start at zero: give them values, so that a missing
        # shift shows.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(torch.randn_like(p) * 0.3)
            reply = model.generate(prompt_ids, max_new_tokens=REPLY_TOKENS, do_sample=False)[0, prompt_ids.shape[1]:]
        if len(set(reply.tolist())) >= 5 and min(reply.tolist()) > SPECIAL:
            break
    model.save_pretrained(out)
    model.generation_config.save_pretrained(out)

    gguf = out / "tiny-gemma3-f32.gguf"
    env = {"PYTHONPATH": str(llama_cpp / "gguf-py")}
    subprocess.run([sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(out), "--outtype", "f32",
                    "--outfile", str(gguf)], check=True, env=env)

    torch.manual_seed(5)
    ids = torch.randint(5, sp.get_piece_size(), (1, LENGTH))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    reply = [int(t) for t in reply if int(t) not in config.eos_token_id]
    (out / "reference.json").write_text(json.dumps({
        "source": f"transformers {transformers.__version__} Gemma3ForCausalLM (seed {seed}); GGUF by llama.cpp's "
                  "convert_hf_to_gguf.py --outtype f32",
        "ids": ids[0].tolist(),
        "positions": CHECKED,
        "logits": [[round(float(x), 5) for x in logits[p]] for p in CHECKED],
        "messages": MESSAGES,
        "prompt": prompt,
        "prompt_ids": prompt_ids[0].tolist(),
        "reply_ids": reply,
        "reply": tokenizer.decode(reply, skip_special_tokens=True),
        "max_tokens": REPLY_TOKENS,
    }) + "\n")
    print(prompt_ids[0].tolist(), reply, repr(tokenizer.decode(reply)))


if __name__ == "__main__":
    main()
