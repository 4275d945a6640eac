//! The chat capability: prompt building, limits and defaults between a validated request and the
//! model's sequence actor.

use actix::Recipient;
use std::sync::Arc;
use std::time::Duration;
use tokenizers::Tokenizer;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::settings::ChatSettings;
use crate::config::ModelEntry;
use crate::engines::chat::{ChatEvent, ChatRequest};
use crate::engines::chat_template::{ChatTemplate, TemplateMessage};
use crate::engines::json_constraint::Schema;
use crate::engines::qwen3_vl::ImageInput;
use crate::engines::sampling::Sampling;
use crate::error::ApiError;
use crate::telemetry::Metrics;
use crate::vision::VisionInputs;
use sis_actors::{Admission, Generate, SequenceMessage};

/// The sequence actor's message type for chat.
pub type ChatGenerate = Generate<ChatRequest, ChatEvent>;

/// Sampling and length settings of a request, before defaults.
#[derive(Debug, Clone, Default)]
pub struct ChatParams {
    /// The conversation.
    pub messages: Vec<TemplateMessage>,
    /// Requested `max_tokens` (validated ≥ 1).
    pub max_tokens: Option<usize>,
    /// Temperature.
    pub temperature: Option<f32>,
    /// top_p.
    pub top_p: Option<f32>,
    /// Seed.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Constrained JSON output.
    pub json: Option<Schema>,
    /// Presence penalty.
    pub presence_penalty: f32,
    /// Frequency penalty.
    pub frequency_penalty: f32,
    /// The images of the conversation's image parts, in order.
    pub images: Vec<ImageInput>,
}

/// A started generation.
pub struct Started {
    /// Events of the sequence; dropping it cancels the sequence.
    pub events: UnboundedReceiver<SequenceMessage<ChatEvent>>,
    /// Prompt tokens.
    pub prompt_tokens: usize,
}

/// One chat model as the request path sees it.
pub struct ChatModel {
    id: Arc<str>,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    context: usize,
    admission: Admission,
    actor: Recipient<ChatGenerate>,
    metrics: Arc<Metrics>,
    limits: ChatSettings,
    defaults: (Option<f32>, Option<f32>, Option<usize>),
    fault_marker: Option<String>,
    vision: Option<VisionInputs>,
}

impl ChatModel {
    /// Wires a model's tokenizer, template, queue and actor together.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        entry: &ModelEntry,
        tokenizer: Arc<Tokenizer>,
        template: ChatTemplate,
        context: usize,
        admission: Admission,
        actor: Recipient<ChatGenerate>,
        metrics: Arc<Metrics>,
        limits: ChatSettings,
    ) -> Self {
        Self {
            id: entry.id.as_str().into(),
            tokenizer,
            template,
            context,
            admission,
            actor,
            metrics,
            limits,
            defaults: (entry.temperature, entry.top_p, entry.max_tokens),
            fault_marker: entry.fault_panic_marker.clone(),
            vision: None,
        }
    }

    /// Makes this a vision model: image parts are loaded, prepared and placed in the prompt.
    pub fn with_vision(mut self, vision: VisionInputs) -> Self {
        self.vision = Some(vision);
        self
    }

    /// The image inputs of a vision model; `None` for text-only models.
    pub fn vision(&self) -> Option<&VisionInputs> {
        self.vision.as_ref()
    }

    /// The admission queue.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The context window in tokens.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Builds the prompt, applies limits and defaults, and queues the sequence.
    pub fn start(&self, params: ChatParams) -> Result<Started, ApiError> {
        let prompt = self.template.render(&params.messages).map_err(|e| ApiError::invalid("messages", e))?;
        let ids = self
            .tokenizer
            .encode(prompt.as_str(), false)
            .map_err(|e| ApiError::invalid("messages", format!("cannot tokenize the prompt: {e}")))?
            .get_ids()
            .to_vec();
        let ids = self.place_images(ids, &params.images)?;
        let max_prompt = self.limits.max_prompt_tokens.min(self.context.saturating_sub(1));
        if ids.len() > max_prompt {
            return Err(ApiError::invalid(
                "messages",
                format!("Prompt too long; max {max_prompt} tokens (this prompt has {})", ids.len()),
            ));
        }
        let requested = params.max_tokens.or(self.defaults.2).unwrap_or(self.limits.default_max_tokens);
        let max_tokens = requested.min(self.limits.max_new_tokens).min(self.context - ids.len()).max(1);
        let fault = cfg!(feature = "fault-injection")
            && self.fault_marker.as_deref().is_some_and(|m| params.messages.iter().any(|msg| msg.content.contains(m)));
        let request = ChatRequest {
            max_tokens,
            sampling: Sampling {
                temperature: params.temperature.or(self.defaults.0).unwrap_or(self.limits.temperature),
                top_p: params.top_p.or(self.defaults.1).unwrap_or(self.limits.top_p),
                presence_penalty: params.presence_penalty,
                frequency_penalty: params.frequency_penalty,
            },
            seed: params.seed.unwrap_or_else(rand::random),
            stop: params.stop,
            json: params.json,
            prompt: ids,
            images: params.images,
            fault,
        };
        let prompt_tokens = request.prompt.len();
        let permit = self
            .admission
            .try_admit()
            .map_err(|e| self.count_overload(ApiError::not_admitted(&self.id, e, Duration::from_secs(1))))?;
        let (message, events) = Generate::new(request, Some(permit));
        self.actor.do_send(message);
        Ok(Started { events, prompt_tokens })
    }

    /// Expands each image placeholder the template wrote into as many tokens as its image takes.
    fn place_images(&self, ids: Vec<u32>, images: &[ImageInput]) -> Result<Vec<u32>, ApiError> {
        let Some(vision) = &self.vision else {
            return Ok(ids);
        };
        let placeholder = vision.tokens.image;
        let found = ids.iter().filter(|&&t| t == placeholder).count();
        if found != images.len() {
            return Err(ApiError::invalid(
                "messages",
                format!("the chat template placed {found} image(s) for {} image part(s)", images.len()),
            ));
        }
        if images.is_empty() {
            return Ok(ids);
        }
        let extra: usize = images.iter().map(|i| vision.tokens_of(i) - 1).sum();
        let mut out = Vec::with_capacity(ids.len() + extra);
        let mut next = images.iter();
        for id in ids {
            match (id == placeholder).then(|| next.next()).flatten() {
                Some(image) => out.extend(std::iter::repeat_n(placeholder, vision.tokens_of(image))),
                None => out.push(id),
            }
        }
        Ok(out)
    }

    /// The API error for a sequence that ended without finishing.
    pub fn failure(&self, error: sis_actors::JobError) -> ApiError {
        self.count_overload(ApiError::job_failed(&self.id, error, Duration::from_secs(1)))
    }

    fn count_overload(&self, error: ApiError) -> ApiError {
        if error.is_overload() {
            self.metrics.chat_queue_rejections.with_label_values(&[&self.id]).inc();
        }
        error
    }
}
