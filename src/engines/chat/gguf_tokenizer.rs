//! A `tokenizers` tokenizer built from GGUF metadata, so a lone .gguf file is enough (as with llama.cpp).
//!
//! Supports byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with the pre-tokenizers named by
//! `tokenizer.ggml.pre`: `smollm` (digits split one by one, then the GPT-2 byte-level regex),
//! `qwen2` (NFC, the Qwen2 split regex), `llama-bpe` (the Llama 3 split regex) and plain `gpt2`.
//! Control tokens (type 3) become special tokens, user-defined ones (type 4) added tokens.
//!
//! Also SentencePiece BPE (`tokenizer.ggml.model = "llama"`: the GGUFs of Llama 2, Mistral, Gemma and
//! many more): pieces with scores, byte fallback (`<0xNN>` pieces), spaces as `▁` and a leading one
//! unless `tokenizer.ggml.add_space_prefix` is false. Its merges are derived from the scores, as
//! Hugging Face's converter does: a piece that splits into two pieces is their merge, ranked by its
//! score, which reproduces SentencePiece's highest-score-first merging.

use anyhow::{anyhow, bail};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn strings(content: &Content, key: &str) -> anyhow::Result<Vec<String>> {
    let values = content.metadata.get(key).ok_or_else(|| anyhow!("GGUF has no {key}"))?.to_vec()?;
    values.iter().map(|v| Ok(v.to_string()?.clone())).collect()
}

fn token_types(content: &Content, count: usize) -> anyhow::Result<Vec<i32>> {
    Ok(match content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v.to_vec()?.iter().map(Value::to_i32).collect::<Result<_, _>>()?,
        None => vec![1; count],
    })
}

/// Builds the tokenizer described by the GGUF metadata.
pub fn from_gguf(content: &Content) -> anyhow::Result<Tokenizer> {
    let model = content.metadata.get("tokenizer.ggml.model").map(|v| v.to_string()).transpose()?;
    let tokens = strings(content, "tokenizer.ggml.tokens")?;
    let types = token_types(content, tokens.len())?;
    let mut tokenizer = match model.map(String::as_str) {
        Some("gpt2") => byte_level_bpe(content, &tokens)?,
        Some("llama") => sentencepiece_bpe(content, &tokens, &types)?,
        Some("bert") => word_piece(content, &tokens)?,
        other => bail!(
            "GGUF tokenizer model {other:?} is not supported (byte-level BPE `gpt2` and SentencePiece `llama` \
             are); put a tokenizer.json beside the .gguf"
        ),
    };
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == 3)
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == 4)
        .map(|(token, _)| AddedToken::from(token.clone(), false))
        .collect();
    tokenizer.add_special_tokens(special).map_err(|e| anyhow!("special tokens: {e}"))?;
    tokenizer.add_tokens(added).map_err(|e| anyhow!("added tokens: {e}"))?;
    Ok(tokenizer)
}

/// BERT's WordPiece (`tokenizer.ggml.model = "bert"`: nomic-bert and BERT embedding GGUFs). llama.cpp's
/// converter writes a word-initial piece with a leading `▁` and a continuation (`##…`) without, so
/// the WordPiece vocabulary is rebuilt by reversing that; `[…]` tokens stay as they are. Text is
/// lowercased (as llama.cpp's WordPiece does), then `[CLS] text [SEP]`.
fn word_piece(content: &Content, tokens: &[String]) -> anyhow::Result<Tokenizer> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::template::TemplateProcessing;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let piece = match t.strip_prefix('▁') {
                Some(word) => word.to_string(),
                None if t.starts_with('[') && t.ends_with(']') => t.clone(),
                None => format!("##{t}"),
            };
            (piece, i as u32)
        })
        .collect();
    let id = |key: &str, fallback: &str| -> anyhow::Result<(String, u32)> {
        let id = match content.metadata.get(key) {
            Some(v) => v.to_u32()?,
            None => *vocab.get(fallback).ok_or_else(|| anyhow!("no {fallback} token"))?,
        };
        let token = tokens.get(id as usize).ok_or_else(|| anyhow!("{key} {id} is past the vocabulary"))?;
        Ok((token.clone(), id))
    };
    let (cls, sep) = (id("tokenizer.ggml.bos_token_id", "[CLS]")?, id("tokenizer.ggml.seperator_token_id", "[SEP]")?);
    let unk = id("tokenizer.ggml.unknown_token_id", "[UNK]")?.0;
    let model = WordPiece::builder().vocab(vocab).unk_token(unk).build().map_err(|e| anyhow!("WordPiece: {e}"))?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_normalizer(Some(BertNormalizer::new(true, true, None, true))).map_err(|e| anyhow!("{e}"))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    let template = TemplateProcessing::builder()
        .try_single(format!("{} $A {}", cls.0, sep.0))
        .map_err(|e| anyhow!("{e}"))?
        .try_pair(format!("{} $A {} $B:1 {}:1", cls.0, sep.0, sep.0))
        .map_err(|e| anyhow!("{e}"))?
        .special_tokens(vec![cls, sep])
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    tokenizer.with_post_processor(Some(template));
    tokenizer.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    Ok(tokenizer)
}

/// SentencePiece BPE from pieces and scores (see the module's notes).
fn sentencepiece_bpe(content: &Content, pieces: &[String], types: &[i32]) -> anyhow::Result<Tokenizer> {
    use tokenizers::decoders::{byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence as Decoders, strip::Strip};
    use tokenizers::normalizers::{replace::Replace, Prepend, Sequence as Normalizers};
    let scores: Vec<f32> = match content.metadata.get("tokenizer.ggml.scores") {
        Some(v) => v.to_vec()?.iter().map(Value::to_f32).collect::<Result<_, _>>()?,
        None => bail!("a SentencePiece GGUF tokenizer needs tokenizer.ggml.scores"),
    };
    if scores.len() != pieces.len() || types.len() != pieces.len() {
        bail!("tokenizer.ggml tokens, scores and token types differ in length");
    }
    let vocab: tokenizers::models::bpe::Vocab = pieces.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    // Only normal pieces (type 1) are built by merging; control, unknown and byte pieces are not.
    let mergeable = |id: u32| types[id as usize] == 1;
    let mut merges: Vec<(f32, u32, u32, String, String)> = Vec::new();
    for (id, piece) in pieces.iter().enumerate() {
        if !mergeable(id as u32) {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = (&piece[..split], &piece[split..]);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                if mergeable(l) && mergeable(r) {
                    merges.push((scores[id], l, r, left.to_string(), right.to_string()));
                }
            }
        }
    }
    // Highest score first; among a piece's splits, by the ids of the halves.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let merges: Vec<(String, String)> = merges.into_iter().map(|(_, _, _, l, r)| (l, r)).collect();
    let unk = content.metadata.get("tokenizer.ggml.unknown_token_id").map(Value::to_u32).transpose()?;
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(piece) = unk.and_then(|id| pieces.get(id as usize)) {
        bpe = bpe.unk_token(piece.clone());
    }
    let mut tokenizer = Tokenizer::new(bpe.build().map_err(|e| anyhow!("BPE: {e}"))?);
    let prefix = match content.metadata.get("tokenizer.ggml.add_space_prefix") {
        Some(v) => v.to_bool()?,
        None => true,
    };
    let spaces = Replace::new(" ", "▁").map_err(|e| anyhow!("{e}"))?;
    let normalizer = match prefix {
        true => Normalizers::new(vec![Prepend::new("▁".into()).into(), spaces.into()]),
        false => Normalizers::new(vec![spaces.into()]),
    };
    tokenizer.with_normalizer(Some(normalizer)).map_err(|e| anyhow!("{e}"))?;
    let decoders = vec![
        Replace::new("▁", " ").map_err(|e| anyhow!("{e}"))?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', usize::from(prefix), 0).into(),
    ];
    tokenizer.with_decoder(Some(Decoders::new(decoders)));
    Ok(tokenizer)
}

/// Byte-level BPE from tokens and merges, with the pre-tokenizer `tokenizer.ggml.pre` names.
fn byte_level_bpe(content: &Content, tokens: &[String]) -> anyhow::Result<Tokenizer> {
    let merges = strings(content, "tokenizer.ggml.merges")?;
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| anyhow!("bad merge {m:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| anyhow!("BPE: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);

    let pre = content.metadata.get("tokenizer.ggml.pre").map(|v| v.to_string()).transpose()?.cloned();
    let split = |pattern: &str| -> anyhow::Result<PreTokenizerWrapper> {
        Ok(Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| anyhow!("split regex: {e}"))?
            .into())
    };
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_deref() {
        Some("smollm") => {
            Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into()
        }
        Some("qwen2") => {
            tokenizer.with_normalizer(Some(NFC)).map_err(|e| anyhow!("{e}"))?;
            Sequence::new(vec![split(QWEN2_PATTERN)?, ByteLevel::new(false, false, false).into()]).into()
        }
        Some("llama-bpe" | "llama3") => {
            Sequence::new(vec![split(LLAMA3_PATTERN)?, ByteLevel::new(false, true, false).into()]).into()
        }
        Some("gpt2" | "default") | None => ByteLevel::new(false, true, true).into(),
        Some(other) => bail!("GGUF pre-tokenizer {other:?} is not supported; put a tokenizer.json beside the .gguf"),
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::VersionedMagic;
    use std::collections::HashMap;

    /// The GPT-2 byte-to-character table.
    fn byte_chars() -> Vec<String> {
        let mut n = 0u32;
        (0..=255u8)
            .map(|b| {
                let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
                if printable {
                    char::from(b).to_string()
                } else {
                    n += 1;
                    char::from_u32(255 + n).unwrap().to_string()
                }
            })
            .collect()
    }

    /// A GGUF header with a byte vocabulary plus merges building "12", "123" and "é" (c3 a9).
    fn content(pre: &str) -> Content {
        let mut tokens = byte_chars();
        let merges = ["1 2", "12 3", "Ã ©"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.push("<|end|>".into());
        let mut types = vec![Value::I32(1); tokens.len()];
        *types.last_mut().unwrap() = Value::I32(3);
        let metadata = HashMap::from([
            ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
            ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens.into_iter().map(Value::String).collect())),
            (
                "tokenizer.ggml.merges".to_string(),
                Value::Array(merges.iter().map(|m| Value::String(m.to_string())).collect()),
            ),
            ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
        ]);
        Content { magic: VersionedMagic::GgufV3, metadata, tensor_infos: HashMap::new(), tensor_data_offset: 0 }
    }

    fn tokens(pre: &str, text: &str) -> Vec<String> {
        let t = from_gguf(&content(pre)).unwrap();
        t.encode(text, false).unwrap().get_tokens().to_vec()
    }

    #[test]
    fn pre_tokenizers_split_digits_as_their_models_do() {
        // Llama 3 groups up to three digits; SmolLM2 and Qwen2 split every digit.
        assert_eq!(tokens("llama-bpe", "1234"), ["123", "4"]);
        assert_eq!(tokens("smollm", "1234"), ["1", "2", "3", "4"]);
        assert_eq!(tokens("qwen2", "1234"), ["1", "2", "3", "4"]);
        // Special tokens are matched whole.
        assert_eq!(tokens("smollm", "1<|end|>"), ["1", "<|end|>"]);
    }

    #[test]
    fn qwen2_normalizes_to_nfc() {
        // "e" + combining acute becomes the precomposed "é" (c3 a9) before byte-level BPE.
        assert_eq!(tokens("qwen2", "e\u{301}"), ["Ã©"]);
        assert_ne!(tokens("smollm", "e\u{301}"), ["Ã©"]);
    }

    #[test]
    fn unknown_models_and_pre_tokenizers_are_refused() {
        let mut c = content("smollm");
        c.metadata.insert("tokenizer.ggml.pre".into(), Value::String("klingon".into()));
        assert!(from_gguf(&c).unwrap_err().to_string().contains("klingon"));
        c.metadata.insert("tokenizer.ggml.model".into(), Value::String("rwkv".into()));
        assert!(from_gguf(&c).unwrap_err().to_string().contains("tokenizer.json"));
    }

    /// A SentencePiece BPE model laid out as GGUF metadata (`scripts/references/spm_tokenizer.py`)
    /// encodes as SentencePiece does: merges by score, byte fallback, the leading `▁`; and decodes back.
    #[test]
    fn sentencepiece_matches_the_reference() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spm-tokenizer.json");
        let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let list = |key: &str| fixture[key].as_array().unwrap().clone();
        let metadata = HashMap::from([
            ("tokenizer.ggml.model".to_string(), Value::String("llama".into())),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(list("pieces").iter().map(|p| Value::String(p.as_str().unwrap().into())).collect()),
            ),
            (
                "tokenizer.ggml.scores".to_string(),
                Value::Array(list("scores").iter().map(|s| Value::F32(s.as_f64().unwrap() as f32)).collect()),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array(list("types").iter().map(|t| Value::I32(t.as_i64().unwrap() as i32)).collect()),
            ),
            ("tokenizer.ggml.unknown_token_id".to_string(), Value::U32(fixture["unk"].as_u64().unwrap() as u32)),
        ]);
        let content =
            Content { magic: VersionedMagic::GgufV3, metadata, tensor_infos: HashMap::new(), tensor_data_offset: 0 };
        let tokenizer = from_gguf(&content).unwrap();
        for case in list("cases") {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            let got = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(got, want, "{text:?}");
            assert_eq!(tokenizer.decode(&got, false).unwrap(), text, "decoding {text:?}");
        }
    }
}
