#!/usr/bin/env python3
"""A small SentencePiece BPE model laid out as a GGUF file's tokenizer metadata (`tokenizer.ggml.model
= "llama"`: pieces, scores, token types as llama.cpp's converter writes them), with the ids
SentencePiece itself gives for some texts, made once and committed as tests/fixtures/spm-tokenizer.json.

The GGUFs of Llama 2, Mistral, Gemma and many more carry such a tokenizer and no tokenizer.json;
this checks sis's reading of it (merges from scores, byte fallback, the leading space) against the
reference implementation.

    .peers/venv/bin/python scripts/references/spm_tokenizer.py
"""
import io
import json
import pathlib

import sentencepiece as spm

CORPUS = """The quick brown fox jumps over the lazy dog.
Paris is the capital of France, and Berlin is the capital of Germany.
Tokenizers split text into pieces; rare words fall back to bytes.
In 2024, the team shipped version 3.14 of the server on time.
She sells sea shells by the sea shore, where the waves are cold.
A journey of a thousand miles begins with a single step.
""" * 20

TEXTS = [
    "The quick brown fox",
    "Paris is the capital of France.",
    "  two leading spaces and trailing ",
    "naïve café in Zürich: ünïcödé falls back to bytes",
    "Numbers like 12345 and 3.14",
    "new\nlines\tand tabs",
    "😀 emoji",
]


def main() -> None:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()), model_writer=model, model_type="bpe", vocab_size=420,
        byte_fallback=True, character_coverage=1.0, split_digits=True, add_dummy_prefix=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        pieces.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        # llama.cpp's token types: 1 normal, 2 unknown, 3 control, 6 byte.
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1)
    out = {
        "source": f"sentencepiece {spm.__version__} BPE, vocab 420, byte fallback",
        "pieces": pieces,
        "scores": scores,
        "types": types,
        "bos": sp.bos_id(),
        "eos": sp.eos_id(),
        "unk": sp.unk_id(),
        "cases": [{"text": t, "ids": sp.encode(t)} for t in TEXTS],
    }
    path = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "spm-tokenizer.json"
    path.write_text(json.dumps(out) + "\n")
    for case in out["cases"]:
        print(case["text"], [pieces[i] for i in case["ids"]])


if __name__ == "__main__":
    main()
