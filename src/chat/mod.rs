//! The chat capability: a validated [`CompletionRequest`] in, a [`ChatStream`] out.
//!
//! [`complete`] finds the model, loads the request's images (vision models), renders the prompt with
//! the model's chat template, compiles a `response_format` schema, applies the model's limits and
//! sampling defaults, admits the sequence (429 when the queue is full) and waits until it joins the
//! running batch, so that queue refusals still get their HTTP status. [`start`] builds a model's
//! sequence actor from its effective settings.

pub mod request;
pub mod stream;

use actix::prelude::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokenizers::Tokenizer;

use crate::config::model::ChatModelSettings;
use crate::config::{Capability, ModelSettings};
use crate::deadline::within;
use crate::engines::chat::json_constraint::Schema;
use crate::engines::chat::oom::OomPolicy;
use crate::engines::chat::sampling::Sampling;
use crate::engines::chat::spec::ChatSpec;
use crate::engines::chat::template::ChatTemplate;
use crate::engines::chat::{ChatEvent, ChatLoader, ChatRequest};
use crate::engines::vision::qwen3_vl::ImageInput;
use crate::error::ApiError;
use crate::runtime::{Launch, RequestPath, Runtime};
use crate::telemetry::outcome::{Counted, Outcome};
use crate::telemetry::Metrics;
use crate::vision::VisionInputs;
pub use request::{CompletionRequest, Content, Detail, ImageRef, Message, Part, RawPrompt, ResponseFormat};
use sis_actors::{Admission, Generate, SequenceActor, SequenceConfig, SequenceMessage, SequenceObserver};
pub use stream::{ChatChunk, ChatStream, Finished};

/// The sequence actor's message type for chat.
pub type ChatGenerate = Generate<ChatRequest, ChatEvent>;

/// Starts a completion with the model the request names.
///
/// Errors before the first token are returned here (and counted in `chat_requests_total`); the stream
/// records the rest of the request's metrics. The request timeout covers the whole completion, or for a
/// streaming request the time until the sequence joins the batch.
pub async fn complete(runtime: &Runtime, request: CompletionRequest) -> Result<ChatStream, ApiError> {
    let outcome = Outcome::start(&runtime.metrics, Counted::Chat, &request.model);
    complete_with(runtime, request, Some(outcome)).await
}

/// As [`complete`], with the request's line in `chat_requests_total` kept by the caller when
/// `outcome` is `None` (a completions request with several prompts is one request).
pub async fn complete_with(
    runtime: &Runtime,
    request: CompletionRequest,
    mut outcome: Option<Outcome>,
) -> Result<ChatStream, ApiError> {
    let stream = request.stream;
    let started = async {
        let served = runtime.model(&request.model)?;
        let id = served.settings.id.as_str();
        if let Some(outcome) = outcome.as_mut() {
            outcome.resolved(id);
        }
        let limit = served.settings.queue.request_timeout;
        match &served.path {
            RequestPath::Chat(model) => Ok((within(limit, model.start(request)).await?, served.clone(), limit)),
            _ => Err(ApiError::invalid("model", format!("Model `{id}` does not support chat completions"))),
        }
    }
    .await;
    match started {
        Ok(((events, prompt_tokens, echo), served, limit)) => {
            let limit = (!stream).then_some(limit);
            let mut completion =
                ChatStream::new(served, events, prompt_tokens, runtime.metrics.clone(), outcome, limit);
            completion.echo = echo;
            Ok(completion)
        }
        Err(error) => {
            if let Some(outcome) = outcome {
                outcome.failed(&error);
            }
            Err(error)
        }
    }
}

/// Builds a chat (or vision) model: its sequence actor and the request path in front of it.
pub fn start(settings: &ModelSettings, dir: &Path, launch: &mut Launch<'_>) -> anyhow::Result<ChatModel> {
    let limits = settings.chat.clone().expect("a chat model has chat settings");
    let weights = match launch.entry.file.as_deref() {
        Some(file) => dir.join(file),
        None => dir.to_path_buf(),
    };
    let spec = ChatSpec::open(&weights)?;
    // A base model (no template in its files, or marked `base_model` in the roster) is served by
    // `/v1/completions` only.
    let template = match (&spec.template, launch.entry.base_model) {
        (Some(source), false) => Some(ChatTemplate::new(source, &spec.bos, &spec.eos)?),
        _ => None,
    };
    let mut loader = ChatLoader::new(&spec, limits.prefill_chunk, settings.precision, settings.device);
    let retries = launch.metrics.chat_oom_retries.with_label_values(&[launch.entry.id.as_str()]);
    loader.oom =
        OomPolicy { on_retry: Some(Arc::new(move || retries.inc())), simulate_above: launch.entry.fault_oom_above };
    launch.kernels = loader.kernels();
    let thread = launch.thread();
    let actor = SequenceActor::start_on(
        &thread,
        Arc::new(loader),
        launch.status.clone(),
        launch.bus.clone(),
        launch.actor_config(),
        SequenceConfig { max_running: settings.queue.max_concurrent, queue_timeout: settings.queue.queue_timeout },
        Arc::new(StepMetrics { model: settings.id.clone(), metrics: launch.metrics.clone() }),
    );
    let vision = match settings.capability {
        Capability::Vision => Some(VisionInputs::open(&weights, launch.settings)?),
        _ => None,
    };
    Ok(ChatModel {
        settings: settings.clone(),
        limits,
        tokenizer: spec.tokenizer,
        template,
        context: spec.context,
        admission: Admission::new(settings.queue.max_queue_size),
        actor: actor.recipient(),
        metrics: launch.metrics.clone(),
        vision,
    })
}

/// Feeds the scheduler's gauges and histograms from the sequence actor.
struct StepMetrics {
    model: String,
    metrics: Arc<Metrics>,
}

impl SequenceObserver for StepMetrics {
    fn step(&self, running: usize, waiting: usize, _took: Duration) {
        self.metrics.chat_batch_size.with_label_values(&[&self.model]).observe(running as f64);
        self.metrics.chat_queue_size.with_label_values(&[&self.model]).set(waiting as i64);
        self.metrics.chat_pool_size.with_label_values::<&str>(&[]).set(running as i64);
    }

    fn cancelled(&self, count: usize) {
        self.metrics.chat_cancelled.with_label_values(&[&self.model]).inc_by(count as u64);
    }
}

/// One chat model as the request path sees it.
pub struct ChatModel {
    settings: ModelSettings,
    limits: ChatModelSettings,
    tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    context: usize,
    admission: Admission,
    actor: Recipient<ChatGenerate>,
    metrics: Arc<Metrics>,
    vision: Option<VisionInputs>,
}

/// The events of an admitted sequence, its prompt length, and (for `echo`) the prompt's text.
type Admitted = (tokio::sync::mpsc::UnboundedReceiver<SequenceMessage<ChatEvent>>, usize, Option<String>);

impl ChatModel {
    /// The admission queue.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The context window in tokens.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Prepares the sequence, queues it, and waits until it joins the running batch.
    async fn start(&self, request: CompletionRequest) -> Result<Admitted, ApiError> {
        // Cheap checks first: a bad schema is refused before any image is fetched.
        let json = schema(&request.response_format)?;
        let images = self.load_images(&request.images).await?;
        let echo = request.echo.then(|| self.prompt_text(&request));
        let sequence = self.sequence(request, images, json)?;
        let prompt_tokens = sequence.prompt.len();
        let permit = self
            .admission
            .try_admit()
            .map_err(|e| self.count_overload(ApiError::not_admitted(&self.settings.id, e, Duration::from_secs(1))))?;
        let (message, mut events) = Generate::new(sequence, Some(permit));
        self.actor.do_send(message);
        match events.recv().await {
            Some(SequenceMessage::Admitted(wait)) => {
                let (model, metrics) = ([self.settings.id.as_str()], &self.metrics);
                metrics.chat_queue_wait.with_label_values(&model).observe(wait.as_secs_f64());
                metrics.chat_batch_wait.with_label_values(&model).observe(wait.as_secs_f64());
                crate::telemetry::request_fields::note_queue_wait(wait);
                Ok((events, prompt_tokens, echo))
            }
            Some(SequenceMessage::Failed(e)) => Err(self.failure(e)),
            Some(SequenceMessage::Event(_)) | None => Err(ApiError::Internal("the model dropped the request".into())),
        }
    }

    /// Loads and prepares the request's images; a text model refuses them.
    async fn load_images(&self, parts: &[ImageRef]) -> Result<Vec<ImageInput>, ApiError> {
        let Some(vision) = &self.vision else {
            return match parts.first() {
                None => Ok(Vec::new()),
                Some(part) => Err(ApiError::invalid(
                    &part.param,
                    format!(
                        "Model `{}` does not accept images; send text only or use a vision model",
                        self.settings.id
                    ),
                )),
            };
        };
        let loaded = futures_util::future::join_all(parts.iter().map(|p| vision.load(&p.url, p.detail))).await;
        let mut images = Vec::with_capacity(parts.len());
        let mut refused = None;
        for (part, result) in parts.iter().zip(loaded) {
            match result {
                Ok(image) => images.push(image),
                Err(rejection) => {
                    self.metrics.image_rejections.with_label_values(&[rejection.reason]).inc();
                    refused.get_or_insert((part, rejection));
                }
            }
        }
        match refused {
            None => Ok(images),
            Some((part, rejection)) => Err(ApiError::invalid(
                &part.param,
                format!("image refused ({}): {}", rejection.reason, rejection.message),
            )),
        }
    }

    /// Builds the sequence: the rendered, tokenized prompt with its images placed, within the model's
    /// limits, with the request's sampling over the model's defaults.
    fn sequence(
        &self,
        request: CompletionRequest,
        images: Vec<ImageInput>,
        json: Option<Schema>,
    ) -> Result<ChatRequest, ApiError> {
        let (ids, param) = match &request.prompt {
            Some(RawPrompt::Tokens(ids)) => {
                let vocab = self.tokenizer.get_vocab_size(true) as u32;
                if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!("token id {bad} is outside the vocabulary of {vocab}"),
                    ));
                }
                (ids.clone(), "prompt")
            }
            Some(RawPrompt::Text(text)) => (self.encode(text, true, "prompt")?, "prompt"),
            None => {
                let Some(template) = &self.template else {
                    return Err(ApiError::invalid(
                        "messages",
                        format!(
                            "Model `{}` is a base model with no chat template; send it a prompt at /v1/completions",
                            self.settings.id
                        ),
                    ));
                };
                let prompt = template.render(&request.messages).map_err(|e| ApiError::invalid("messages", e))?;
                (self.encode(&prompt, false, "messages")?, "messages")
            }
        };
        if ids.is_empty() {
            return Err(ApiError::invalid(param, "the prompt is empty"));
        }
        let ids = self.place_images(ids, &images)?;
        let limits = &self.limits;
        let max_prompt = limits.max_prompt_tokens.min(self.context.saturating_sub(1));
        if ids.len() > max_prompt {
            return Err(ApiError::invalid(
                param,
                format!("Prompt too long; max {max_prompt} tokens (this prompt has {})", ids.len()),
            ));
        }
        let requested = request.max_tokens.unwrap_or(limits.default_max_tokens);
        // Scoring a prompt (echo with logprobs) may generate nothing.
        let least = usize::from(!(request.echo && request.logprobs.is_some()));
        let max_tokens = requested.min(limits.max_new_tokens).min(self.context - ids.len()).max(least);
        let fault = cfg!(feature = "fault-injection")
            && self
                .settings
                .fault_marker
                .as_deref()
                .is_some_and(|marker| request.messages.iter().any(|message| message.content.contains(marker)));
        Ok(ChatRequest {
            max_tokens,
            sampling: Sampling {
                temperature: request.temperature.unwrap_or(limits.temperature),
                top_p: request.top_p.unwrap_or(limits.top_p),
                presence_penalty: request.presence_penalty,
                frequency_penalty: request.frequency_penalty,
            },
            seed: request.seed.unwrap_or_else(rand::random),
            stop: request.stop,
            json,
            prompt: ids,
            images,
            fault,
            logprobs: request.logprobs,
            prompt_logprobs: request.echo && request.logprobs.is_some(),
        })
    }

    fn encode(&self, text: &str, special: bool, param: &str) -> Result<Vec<u32>, ApiError> {
        let encoding = self
            .tokenizer
            .encode(text, special)
            .map_err(|e| ApiError::invalid(param, format!("cannot tokenize the prompt: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// A completions prompt's text, as `echo` returns it.
    fn prompt_text(&self, request: &CompletionRequest) -> String {
        match &request.prompt {
            Some(RawPrompt::Text(text)) => text.clone(),
            Some(RawPrompt::Tokens(ids)) => self.tokenizer.decode(ids, false).unwrap_or_default(),
            None => String::new(),
        }
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
    pub(crate) fn failure(&self, error: sis_actors::JobError) -> ApiError {
        self.count_overload(ApiError::job_failed(&self.settings.id, error, Duration::from_secs(1)))
    }

    fn count_overload(&self, error: ApiError) -> ApiError {
        if error.is_overload() {
            self.metrics.chat_queue_rejections.with_label_values(&[&self.settings.id]).inc();
        }
        error
    }
}

/// The output constraint of a `response_format`.
fn schema(format: &ResponseFormat) -> Result<Option<Schema>, ApiError> {
    Ok(match format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(Schema::Object(None)),
        ResponseFormat::JsonSchema(schema) => {
            Some(Schema::compile(schema).map_err(|e| {
                ApiError::invalid("response_format", format!("response_format.json_schema.schema: {e}"))
            })?)
        }
    })
}
