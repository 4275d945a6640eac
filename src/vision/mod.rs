//! Vision input: loading `image_url` parts safely and preparing images for a vision model.

pub mod image_source;
pub mod preprocess;

use std::sync::Arc;

use crate::engines::qwen3_vl::{ImageInput, VisionTokens};
use image_source::{ImagePolicy, Rejection, Resolver};
use preprocess::ProcessorConfig;

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
    /// Reads a Qwen3-VL checkpoint's vision token ids and processor, with the server's image policy.
    pub fn open(dir: &std::path::Path, images: &crate::config::settings::ImageSettings) -> anyhow::Result<Self> {
        let (_, tokens) = crate::engines::qwen3_vl::read_config(&dir.join("config.json"))?.ok_or_else(|| {
            anyhow::anyhow!("{} has no vision_config: not a vision-language checkpoint", dir.display())
        })?;
        let path = dir.join("preprocessor_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Self {
            policy: ImagePolicy::from_settings(images),
            resolver: Arc::new(image_source::SystemResolver),
            processor: ProcessorConfig::from_json(&json),
            tokens,
        })
    }

    /// Loads and prepares the image an `image_url.url` names; decoding runs off the async threads.
    pub async fn load(&self, url: &str) -> Result<ImageInput, Rejection> {
        let loaded = self.policy.load(url, self.resolver.as_ref()).await?;
        let processor = self.processor.clone();
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
