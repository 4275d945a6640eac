//! Log-probabilities in the two shapes OpenAI's API uses: chat's `logprobs.content` list, and the
//! legacy completions' parallel lists (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).

use serde_json::{json, Map, Value};

use crate::engines::chat::TokenLogprob;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Chat's `choices[].logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat(tokens: &[TokenLogprob]) -> Value {
    let entry = |bytes: &[u8], logprob: f32| json!({ "token": text(bytes), "logprob": logprob, "bytes": bytes });
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(&t.bytes, t.logprob.unwrap_or(f32::NAN));
            e["top_logprobs"] = t.top.iter().map(|(b, l)| entry(b, *l)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

/// The completions' `logprobs` of `tokens`, their text starting at `offset` characters into the
/// choice's text: a prompt's first token has `null` log-probability and alternatives.
pub fn completion(tokens: &[TokenLogprob], mut offset: usize) -> Value {
    let (mut names, mut logprobs, mut tops, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in tokens {
        let name = text(&t.bytes);
        offsets.push(offset);
        offset += name.chars().count();
        logprobs.push(t.logprob.map_or(Value::Null, |l| json!(l)));
        tops.push(match t.logprob {
            None => Value::Null,
            Some(_) => Value::Object(t.top.iter().map(|(b, l)| (text(b), json!(l))).collect::<Map<_, _>>()),
        });
        names.push(name);
    }
    json!({ "tokens": names, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets })
}
