//! Image preprocessing as Qwen2-VL / Qwen3-VL processors define it (`preprocessor_config.json`):
//! resize so both sides are multiples of patch size × merge size within the pixel budget, rescale to
//! [0, 1], normalize with the processor's mean and std, and cut into temporal × spatial patches.

/// The processor settings that matter.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    /// Patch side in pixels (14 for Qwen2-VL, 16 for Qwen3-VL).
    pub patch_size: usize,
    /// Patches merged per side into one token.
    pub merge_size: usize,
    /// Frames per temporal patch (an image is repeated to fill it).
    pub temporal_patch_size: usize,
    /// Fewest pixels after resizing.
    pub min_pixels: usize,
    /// Most pixels after resizing.
    pub max_pixels: usize,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel std.
    pub std: [f32; 3],
}

impl ProcessorConfig {
    /// Reads `preprocessor_config.json` (both the `min_pixels`/`max_pixels` and the
    /// `size.shortest_edge`/`size.longest_edge` spellings).
    pub fn from_json(json: &serde_json::Value) -> Self {
        let get = |k: &str| json.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        let size = |k: &str| json.get("size").and_then(|s| s.get(k)).and_then(|v| v.as_u64()).map(|v| v as usize);
        let triple = |k: &str, d: [f32; 3]| {
            json.get(k)
                .and_then(|v| v.as_array())
                .filter(|a| a.len() == 3)
                .map(|a| [0, 1, 2].map(|i| a[i].as_f64().unwrap_or(d[i] as f64) as f32))
                .unwrap_or(d)
        };
        Self {
            patch_size: get("patch_size").unwrap_or(16),
            merge_size: get("merge_size").unwrap_or(2),
            temporal_patch_size: get("temporal_patch_size").unwrap_or(2),
            min_pixels: get("min_pixels").or(size("shortest_edge")).unwrap_or(56 * 56),
            max_pixels: get("max_pixels").or(size("longest_edge")).unwrap_or(28 * 28 * 1280),
            mean: triple("image_mean", [0.5, 0.5, 0.5]),
            std: triple("image_std", [0.5, 0.5, 0.5]),
        }
    }

    /// The same processor with at most `max_pixels` per image (never below its minimum).
    pub fn with_max_pixels(&self, max_pixels: usize) -> Self {
        let max_pixels = self.max_pixels.min(max_pixels).max(self.min_pixels);
        Self { max_pixels, ..self.clone() }
    }

    /// The resized `(height, width)`: multiples of patch × merge, within the pixel budget, close to the
    /// original aspect ratio. Errors for absurd aspect ratios (over 200:1).
    pub fn target_size(&self, height: usize, width: usize) -> Result<(usize, usize), String> {
        let factor = (self.patch_size * self.merge_size) as f64;
        let (h, w) = (height as f64, width as f64);
        if height == 0 || width == 0 {
            return Err("the image is empty".into());
        }
        if h.max(w) / h.min(w) > 200.0 {
            return Err(format!("the aspect ratio {width}×{height} is more extreme than 200:1"));
        }
        let round = |x: f64| ((x / factor).round() * factor).max(factor);
        let (mut hb, mut wb) = (round(h), round(w));
        if hb * wb > self.max_pixels as f64 {
            let beta = (h * w / self.max_pixels as f64).sqrt();
            hb = ((h / beta / factor).floor() * factor).max(factor);
            wb = ((w / beta / factor).floor() * factor).max(factor);
        } else if hb * wb < self.min_pixels as f64 {
            let beta = (self.min_pixels as f64 / (h * w)).sqrt();
            hb = (h * beta / factor).ceil() * factor;
            wb = (w * beta / factor).ceil() * factor;
        }
        Ok((hb as usize, wb as usize))
    }

    /// The patch grid `(t, h, w)` of a resized image, and the number of tokens it takes in the prompt.
    pub fn grid(&self, height: usize, width: usize) -> ((usize, usize, usize), usize) {
        let grid = (1, height / self.patch_size, width / self.patch_size);
        (grid, grid.0 * grid.1 * grid.2 / (self.merge_size * self.merge_size))
    }

    /// Normalized patches of an RGB image already resized to `(height, width)` (row-major, 3 bytes per
    /// pixel): one row per patch, ordered by merge block as the vision tower expects, each row holding
    /// channel × temporal × patch × patch values.
    pub fn patches(&self, rgb: &[u8], height: usize, width: usize) -> Vec<f32> {
        let (p, m, t) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        let (gh, gw) = (height / p, width / p);
        let mut out = Vec::with_capacity(gh * gw * 3 * t * p * p);
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let (py, px) = ((bh * m + mh) * p, (bw * m + mw) * p);
                        for c in 0..3 {
                            for _ in 0..t {
                                for y in 0..p {
                                    for x in 0..p {
                                        let v = rgb[((py + y) * width + px + x) * 3 + c] as f32 / 255.0;
                                        out.push((v - self.mean[c]) / self.std[c]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qwen3() -> ProcessorConfig {
        ProcessorConfig::from_json(&json!({
            "patch_size": 16, "merge_size": 2, "temporal_patch_size": 2,
            "size": { "shortest_edge": 65536, "longest_edge": 16777216 },
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        }))
    }

    #[test]
    fn resize_targets_worked_out_by_hand() {
        let c = qwen3();
        // 640×480 has 307200 pixels, inside the budget: round each side to a multiple of 32.
        assert_eq!(c.target_size(480, 640).unwrap(), (480, 640));
        // 100×50 = 5000 pixels is under the 65536 minimum: scale by √(65536/5000) ≈ 3.62, round up
        // to multiples of 32: 50·3.62 = 181 → 192, 100·3.62 = 362 → 384.
        assert_eq!(c.target_size(50, 100).unwrap(), (192, 384));
        // 333×517: 333/32 = 10.4 → 320, 517/32 = 16.2 → 512 (163840 pixels, inside the budget).
        assert_eq!(c.target_size(333, 517).unwrap(), (320, 512));
        // Over the maximum: 8000×8000 with max 1024·1024 scales to floor(8000/7.8125/32)·32 = 1024.
        let small = ProcessorConfig { max_pixels: 1024 * 1024, ..c.clone() };
        assert_eq!(small.target_size(8000, 8000).unwrap(), (1024, 1024));
        assert!(c.target_size(10, 5000).is_err());
        // 480×640 → a 30×40 patch grid, 1200 patches, 300 tokens after the 2×2 merge.
        assert_eq!(c.grid(480, 640), ((1, 30, 40), 300));
    }

    #[test]
    fn patches_are_normalized_and_ordered_by_merge_block() {
        let c = ProcessorConfig { patch_size: 2, merge_size: 2, temporal_patch_size: 2, ..qwen3() };
        // A 4×4 image whose red channel is the pixel index, green 255, blue 0.
        let rgb: Vec<u8> = (0..16u8).flat_map(|i| [i * 10, 255, 0]).collect();
        let patches = c.patches(&rgb, 4, 4);
        assert_eq!(patches.len(), 4 * 3 * 2 * 2 * 2);
        let row = 3 * 2 * 2 * 2;
        // First patch (top-left 2×2: pixels 0, 1, 4, 5), red channel, first frame: (v/255 − 0.5)/0.5.
        let norm = |v: u8| (v as f32 / 255.0 - 0.5) / 0.5;
        assert_eq!(&patches[..4], &[norm(0), norm(10), norm(40), norm(50)]);
        // The temporal copy repeats the frame.
        assert_eq!(&patches[4..8], &patches[..4]);
        // Green is 1.0 everywhere, blue −1.0.
        assert!(patches[8..16].iter().all(|&g| (g - 1.0).abs() < 1e-6));
        assert!(patches[16..24].iter().all(|&b| (b + 1.0).abs() < 1e-6));
        // Second patch in merge order is the top-right 2×2 (pixels 2, 3, 6, 7).
        assert_eq!(&patches[row..row + 4], &[norm(20), norm(30), norm(60), norm(70)]);
    }
}

/// An image ready for the vision tower.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// Normalized patches, one row per patch (see [`ProcessorConfig::patches`]).
    pub patches: Vec<f32>,
    /// Patch grid `(t, h, w)`.
    pub grid: (usize, usize, usize),
    /// Placeholder tokens the image takes in the prompt.
    pub tokens: usize,
}

/// Most pixels an upload may decode to (decompression bombs are refused before allocation).
pub const MAX_DECODED_PIXELS: u64 = 50_000_000;

impl ProcessorConfig {
    /// Decodes an encoded image (PNG, JPEG, WebP, GIF first frame), resizes it with a bicubic filter to
    /// [`ProcessorConfig::target_size`] and cuts it into patches.
    pub fn prepare(&self, bytes: &[u8]) -> Result<PreparedImage, String> {
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read the image: {e}"))?;
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(MAX_DECODED_PIXELS * 4);
        reader.limits(limits);
        let (width, height) = reader.into_dimensions().map_err(|e| format!("cannot read the image: {e}"))?;
        if width as u64 * height as u64 > MAX_DECODED_PIXELS {
            return Err(format!("the image is {width}×{height}, more than {MAX_DECODED_PIXELS} pixels"));
        }
        let decoded = image::load_from_memory(bytes).map_err(|e| format!("cannot decode the image: {e}"))?;
        let (th, tw) = self.target_size(height as usize, width as usize)?;
        let rgb = decoded.resize_exact(tw as u32, th as u32, image::imageops::FilterType::CatmullRom).to_rgb8();
        let patches = self.patches(rgb.as_raw(), th, tw);
        let (grid, tokens) = self.grid(th, tw);
        Ok(PreparedImage { patches, grid, tokens })
    }
}

#[cfg(test)]
mod prepare_tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn prepares_real_images_and_refuses_bad_ones() {
        let c =
            ProcessorConfig::from_json(&serde_json::json!({ "patch_size": 16, "merge_size": 2, "min_pixels": 65536 }));
        let p = c.prepare(&png(640, 480)).unwrap();
        assert_eq!(p.grid, (1, 30, 40));
        assert_eq!(p.tokens, 300);
        assert_eq!(p.patches.len(), 1200 * 3 * 2 * 16 * 16);
        // A small image is scaled up to the pixel floor (worked out in `resize_targets_worked_out_by_hand`).
        assert_eq!(c.prepare(&png(100, 50)).unwrap().grid, (1, 12, 24));
        assert!(c.prepare(b"not an image").is_err());
        // A PNG header announcing 100000×100000 pixels is refused before anything is allocated.
        let mut bomb = png(1, 1);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let err = c.prepare(&bomb).unwrap_err();
        assert!(err.contains("pixels") || err.contains("cannot"), "{err}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Random bytes behind every accepted signature are refused without a panic.
        #[test]
        fn any_image_bytes_prepare_or_are_refused(
            prefix in prop::sample::select(vec![&b"\x89PNG\r\n\x1a\n"[..], b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 "]),
            tail in prop::collection::vec(any::<u8>(), 0..1024),
        ) {
            let config = ProcessorConfig::from_json(&serde_json::json!({}));
            let _ = config.prepare(&[prefix, &tail[..]].concat());
        }
    }
}
