//! A chat completion request as the chat capability takes it: the API's fields, their JSON shape
//! already checked, before the model's template, limits and defaults are applied.

pub use crate::engines::chat::template::{Content, Part, TemplateMessage as Message};
pub use crate::vision::Detail;

/// A validated chat completion request.
#[derive(Debug, Clone, Default)]
pub struct CompletionRequest {
    /// The model id.
    pub model: String,
    /// The conversation; each image part is a [`Part::Image`] whose source is the next of `images`.
    pub messages: Vec<Message>,
    /// The image parts of the conversation, in order.
    pub images: Vec<ImageRef>,
    /// Requested `max_tokens` (at least 1).
    pub max_tokens: Option<usize>,
    /// Temperature (0 is greedy).
    pub temperature: Option<f32>,
    /// top_p.
    pub top_p: Option<f32>,
    /// Seed.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// `response_format`.
    pub response_format: ResponseFormat,
    /// Presence penalty.
    pub presence_penalty: f32,
    /// Frequency penalty.
    pub frequency_penalty: f32,
    /// Whether the answer streams (the request timeout then ends at the first token).
    pub stream: bool,
    /// `/v1/completions`: the prompt as given, tokenized without a template (`messages` is then empty).
    pub prompt: Option<RawPrompt>,
    /// Log-probabilities of the generated tokens, with this many alternatives each.
    pub logprobs: Option<usize>,
    /// `/v1/completions` `echo`: the prompt's text comes back before the completion, and with
    /// `logprobs` its tokens' log-probabilities; `max_tokens` may then be 0.
    pub echo: bool,
}

/// A completions prompt as the client sent it.
#[derive(Debug, Clone)]
pub enum RawPrompt {
    /// Text, tokenized as the model's tokenizer does by default (special tokens such as BOS added).
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// Where an image part sits in the request (for errors) and what it points at.
#[derive(Debug, Clone)]
pub struct ImageRef {
    /// The part's place, e.g. `messages[0].content[1]`.
    pub param: String,
    /// `image_url.url`.
    pub url: String,
    /// `image_url.detail`.
    pub detail: Detail,
}

/// `response_format`.
#[derive(Debug, Clone, Default)]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// A JSON document matching this schema (`json_schema.schema`).
    JsonSchema(serde_json::Value),
}
