//! Vision input: loading `image_url` parts safely and preparing images for a vision model.

pub mod image_source;
pub mod preprocess;

use std::sync::Arc;

use crate::engines::vision::qwen3_vl::{ImageInput, VisionTokens};
use image_source::{ImagePolicy, Rejection, Resolver};
use preprocess::ProcessorConfig;

/// An `image_url.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Detail {
    /// The processor's own budget.
    #[default]
    Auto,
    /// Fewer tokens: at most [`LOW_DETAIL_PIXELS`].
    Low,
    /// The processor's own budget.
    High,
}

/// Pixel budget of a `detail: low` image.
pub const LOW_DETAIL_PIXELS: usize = 512 * 512;

/// What the request path of a vision model needs: where images may come from, how the model's
/// processor prepares them, and the prompt tokens that stand for them.
pub struct VisionInputs {
    /// Which image sources are allowed.
    pub policy: ImagePolicy,
    /// Name resolution for remote images.
    pub resolver: Arc<dyn Resolver>,
    /// The model's `preprocessor_config.json`.
    pub processor: ProcessorConfig,
    /// The model's vision token ids.
    pub tokens: VisionTokens,
}

impl VisionInputs {
    /// Reads a Qwen3-VL checkpoint's vision token ids and processor, with the server's image policy
    /// and pixel budget.
    pub fn open(dir: &std::path::Path, settings: &crate::config::Settings) -> anyhow::Result<Self> {
        let (_, tokens) =
            crate::engines::vision::qwen3_vl::read_config(&dir.join("config.json"))?.ok_or_else(|| {
                anyhow::anyhow!("{} has no Qwen3-VL vision_config: not a vision-language checkpoint sis runs (Gemma 3 is served as \
                     text by the chat kind)", dir.display())
            })?;
        let path = dir.join("preprocessor_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut processor = ProcessorConfig::from_json(&json);
        if settings.vision.max_pixels > 0 {
            processor = processor.with_max_pixels(settings.vision.max_pixels);
        }
        Ok(Self {
            policy: ImagePolicy::from_settings(&settings.images),
            resolver: Arc::new(image_source::SystemResolver),
            processor,
            tokens,
        })
    }

    /// Loads and prepares the image an `image_url.url` names; decoding runs off the async threads.
    /// `detail: low` caps the image at 512×512 pixels' worth of tokens, as OpenAI's low detail does.
    pub async fn load(&self, url: &str, detail: Detail) -> Result<ImageInput, Rejection> {
        let loaded = self.policy.load(url, self.resolver.as_ref()).await?;
        let processor = match detail {
            Detail::Low => self.processor.with_max_pixels(LOW_DETAIL_PIXELS),
            Detail::Auto | Detail::High => self.processor.clone(),
        };
        let prepared = tokio::task::spawn_blocking(move || processor.prepare(&loaded.bytes))
            .await
            .map_err(|e| Rejection { reason: "bad_image", message: format!("the image could not be prepared: {e}") })?
            .map_err(|message| Rejection { reason: "bad_image", message })?;
        let (t, h, w) = prepared.grid;
        Ok(ImageInput { patches: prepared.patches, grid: [t, h, w] })
    }

    /// Language tokens an image takes.
    pub fn tokens_of(&self, image: &ImageInput) -> usize {
        image.tokens(self.processor.merge_size)
    }
}
