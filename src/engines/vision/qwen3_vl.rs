//! Qwen3-VL's vision half: the ViT that turns an image's patches into language-model embeddings
//! (plus DeepStack features for the first decoder layers), and the 3-D rotary positions of a prompt
//! holding images. The language half is [`crate::engines::chat::llama`] with MRoPE.
//!
//! Tensor names and config keys are the Hub's (`model.visual.*`, `vision_config`).

use anyhow::Context;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use std::path::Path;

use crate::engines::nn::attention::sdpa;

/// The `vision_config` of a Qwen3-VL `config.json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct VisionConfig {
    /// ViT blocks.
    pub depth: usize,
    /// ViT width.
    pub hidden_size: usize,
    /// ViT feed-forward width.
    pub intermediate_size: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Input channels.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Patches merged per side into one language token.
    pub spatial_merge_size: usize,
    /// Frames per temporal patch.
    pub temporal_patch_size: usize,
    /// Width of the language model.
    pub out_hidden_size: usize,
    /// Learned position embeddings (a square grid, interpolated to each image).
    pub num_position_embeddings: usize,
    /// Blocks whose output feeds a DeepStack merger.
    #[serde(default)]
    pub deepstack_visual_indexes: Vec<usize>,
}

fn three() -> usize {
    3
}

/// Token ids a Qwen3-VL prompt uses around images.
#[derive(Debug, Clone, Copy)]
pub struct VisionTokens {
    /// `<|image_pad|>`: one per image token.
    pub image: u32,
    /// `<|vision_start|>`.
    pub start: u32,
    /// `<|vision_end|>`.
    pub end: u32,
}

/// Reads `vision_config` and the vision token ids from a `config.json`; `None` for text-only models
/// and for towers other than Qwen3-VL's (Gemma 3's SigLIP: such models are served as text).
pub fn read_config(path: &Path) -> anyhow::Result<Option<(VisionConfig, VisionTokens)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let Some(vision) = json.get("vision_config").filter(|_| json["model_type"] != "gemma3") else {
        return Ok(None);
    };
    let config: VisionConfig =
        serde_json::from_value(vision.clone()).with_context(|| format!("vision_config of {}", path.display()))?;
    let id = |key: &str| -> anyhow::Result<u32> {
        json.get(key).and_then(|v| v.as_u64()).map(|v| v as u32).with_context(|| format!("config.json has no {key}"))
    };
    let tokens = VisionTokens {
        image: id("image_token_id")?,
        start: id("vision_start_token_id")?,
        end: id("vision_end_token_id")?,
    };
    if !config.hidden_size.is_multiple_of(config.num_heads)
        || !(config.hidden_size / config.num_heads).is_multiple_of(4)
    {
        anyhow::bail!("vision hidden_size {} does not split into {} heads", config.hidden_size, config.num_heads);
    }
    let side = (config.num_position_embeddings as f64).sqrt().round() as usize;
    if side * side != config.num_position_embeddings {
        anyhow::bail!("num_position_embeddings {} is not a square", config.num_position_embeddings);
    }
    Ok(Some((config, tokens)))
}

/// One preprocessed image: normalized patches in merge-block order and its `(t, h, w)` patch grid.
#[derive(Debug, Clone)]
pub struct ImageInput {
    /// `[t·h·w, channels·temporal·patch·patch]`, row-major.
    pub patches: Vec<f32>,
    /// The patch grid.
    pub grid: [usize; 3],
}

impl ImageInput {
    /// Language tokens the image takes after the merge.
    pub fn tokens(&self, merge: usize) -> usize {
        self.grid[0] * self.grid[1] * self.grid[2] / (merge * merge)
    }
}

struct Block {
    norm1: LayerNorm,
    norm2: LayerNorm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

struct Merger {
    norm: LayerNorm,
    /// DeepStack mergers normalize after gathering the 2×2 block (width ×4), the final one before.
    post_shuffle: bool,
    fc1: Linear,
    fc2: Linear,
}

impl Merger {
    fn load(c: &VisionConfig, post_shuffle: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        let merged = c.hidden_size * c.spatial_merge_size * c.spatial_merge_size;
        let norm_width = if post_shuffle { merged } else { c.hidden_size };
        Ok(Self {
            norm: candle_nn::layer_norm(norm_width, 1e-6, vb.pp("norm"))?,
            post_shuffle,
            fc1: candle_nn::linear(merged, merged, vb.pp("linear_fc1"))?,
            fc2: candle_nn::linear(merged, c.out_hidden_size, vb.pp("linear_fc2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, unit: usize) -> candle_core::Result<Tensor> {
        let (n, width) = xs.dims2()?;
        let grouped = if self.post_shuffle {
            self.norm.forward(&xs.reshape((n / unit, width * unit))?)?
        } else {
            self.norm.forward(xs)?.reshape((n / unit, width * unit))?
        };
        self.fc2.forward(&self.fc1.forward(&grouped)?.gelu_erf()?)
    }
}

/// The loaded vision tower.
pub struct VisionTower {
    config: VisionConfig,
    /// The patch convolution as a matrix: kernel = stride = patch, so it is one matmul per patch.
    patch_weight: Tensor,
    patch_bias: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    merger: Merger,
    deepstack: Vec<Merger>,
    /// Where it runs, and the type of its weights and activations there.
    device: Device,
    dtype: DType,
}

impl VisionTower {
    /// Loads `model.visual.*` from the checkpoint's safetensors files onto `device`, in `dtype` (f32 on
    /// the CPU, the checkpoint's half precision on a GPU).
    pub fn load(
        files: &[std::path::PathBuf],
        config: VisionConfig,
        device: &Device,
        dtype: DType,
    ) -> anyhow::Result<Self> {
        // SAFETY: the files are mapped read-only and not modified while the model loads.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device)? };
        let vb = vb.pp("model.visual");
        let c = &config;
        let patch_len = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
        let patch_weight = vb
            .get(
                (c.hidden_size, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size),
                "patch_embed.proj.weight",
            )?
            .reshape((c.hidden_size, patch_len))?
            .t()?
            .contiguous()?;
        let patch_bias = vb.get(c.hidden_size, "patch_embed.proj.bias")?;
        let pos_embed = vb.get((c.num_position_embeddings, c.hidden_size), "pos_embed.weight")?;
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            let b = vb.pp(format!("blocks.{i}"));
            let h = c.hidden_size;
            blocks.push(Block {
                norm1: candle_nn::layer_norm(h, 1e-6, b.pp("norm1"))?,
                norm2: candle_nn::layer_norm(h, 1e-6, b.pp("norm2"))?,
                qkv: candle_nn::linear(h, 3 * h, b.pp("attn.qkv"))?,
                proj: candle_nn::linear(h, h, b.pp("attn.proj"))?,
                fc1: candle_nn::linear(h, c.intermediate_size, b.pp("mlp.linear_fc1"))?,
                fc2: candle_nn::linear(c.intermediate_size, h, b.pp("mlp.linear_fc2"))?,
            });
        }
        let merger = Merger::load(c, false, vb.pp("merger"))?;
        let deepstack = (0..c.deepstack_visual_indexes.len())
            .map(|i| Merger::load(c, true, vb.pp(format!("deepstack_merger_list.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            config,
            patch_weight,
            patch_bias,
            pos_embed,
            blocks,
            merger,
            deepstack,
            device: device.clone(),
            dtype,
        })
    }

    /// The config.
    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    /// Embeds one image: `[tokens, out_hidden]` plus one `[tokens, out_hidden]` per DeepStack layer.
    pub fn forward(&self, image: &ImageInput) -> anyhow::Result<(Tensor, Vec<Tensor>)> {
        let c = &self.config;
        let [t, h, w] = image.grid;
        let n = t * h * w;
        let patch_len = self.patch_weight.dim(0)?;
        if image.patches.len() != n * patch_len || h % c.spatial_merge_size != 0 || w % c.spatial_merge_size != 0 {
            anyhow::bail!("image patches do not match the grid {:?}", image.grid);
        }
        let patches = Tensor::from_slice(&image.patches, (n, patch_len), &self.device)?.to_dtype(self.dtype)?;
        let mut x = patches.matmul(&self.patch_weight)?.broadcast_add(&self.patch_bias)?;
        x = (x + self.position_embeddings(t, h, w)?)?;
        let (cos, sin) = self.rotary(t, h, w)?;
        let heads = c.num_heads;
        let head_dim = c.hidden_size / heads;
        let unit = c.spatial_merge_size * c.spatial_merge_size;
        let mut deepstack = Vec::with_capacity(self.deepstack.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let normed = block.norm1.forward(&x)?;
            let qkv = block.qkv.forward(&normed)?.reshape((n, 3, heads, head_dim))?.permute((1, 2, 0, 3))?;
            let rotate = |t: Tensor| candle_nn::rotary_emb::rope(&t.unsqueeze(0)?.contiguous()?, &cos, &sin);
            let q = rotate(qkv.get(0)?)?;
            let k = rotate(qkv.get(1)?)?;
            let v = qkv.get(2)?.unsqueeze(0)?.contiguous()?;
            // One image attends to itself in full (no mask): t·h·w patches.
            let attn = sdpa(&q, &k.contiguous()?, &v, Some(1.0 / (head_dim as f64).sqrt()), None)?;
            let attn = attn.squeeze(0)?.transpose(0, 1)?.reshape((n, c.hidden_size))?;
            x = (x + block.proj.forward(&attn)?)?;
            let mlp = block.fc2.forward(&block.fc1.forward(&block.norm2.forward(&x)?)?.gelu()?)?;
            x = (x + mlp)?;
            if let Some(k) = c.deepstack_visual_indexes.iter().position(|&d| d == i) {
                deepstack.push(self.deepstack[k].forward(&x, unit)?);
            }
        }
        Ok((self.merger.forward(&x, unit)?, deepstack))
    }

    /// The learned square grid of position embeddings, bilinearly resampled to `h × w` and laid out
    /// in merge-block order, repeated over `t`.
    fn position_embeddings(&self, t: usize, h: usize, w: usize) -> candle_core::Result<Tensor> {
        let side = (self.config.num_position_embeddings as f64).sqrt().round() as usize;
        let m = self.config.spatial_merge_size;
        let points = |steps: usize| -> Vec<f32> {
            if steps == 1 {
                return vec![0.0];
            }
            (0..steps).map(|i| i as f32 * (side - 1) as f32 / (steps - 1) as f32).collect()
        };
        let (ys, xs) = (points(h), points(w));
        let mut index = [Vec::with_capacity(h * w), Vec::new(), Vec::new(), Vec::new()];
        let mut weight = [Vec::with_capacity(h * w), Vec::new(), Vec::new(), Vec::new()];
        for bh in 0..h / m {
            for bw in 0..w / m {
                for ih in 0..m {
                    for iw in 0..m {
                        let (y, x) = (ys[bh * m + ih], xs[bw * m + iw]);
                        let (y0, x0) = (y.floor() as usize, x.floor() as usize);
                        let (y1, x1) = ((y.ceil() as usize).min(side - 1), (x.ceil() as usize).min(side - 1));
                        let (dy, dx) = (y - y0 as f32, x - x0 as f32);
                        let corners = [
                            (y0 * side + x0, (1.0 - dy) * (1.0 - dx)),
                            (y0 * side + x1, (1.0 - dy) * dx),
                            (y1 * side + x0, dy * (1.0 - dx)),
                            (y1 * side + x1, dy * dx),
                        ];
                        for (k, (i, wgt)) in corners.into_iter().enumerate() {
                            index[k].push(i as u32);
                            weight[k].push(wgt);
                        }
                    }
                }
            }
        }
        let mut sum: Option<Tensor> = None;
        for (i, wgt) in index.into_iter().zip(weight) {
            let len = i.len();
            let rows = self.pos_embed.index_select(&Tensor::from_vec(i, len, &self.device)?, 0)?;
            let term = rows.broadcast_mul(&Tensor::from_vec(wgt, (len, 1), &self.device)?.to_dtype(self.dtype)?)?;
            sum = Some(match sum {
                Some(s) => (s + term)?,
                None => term,
            });
        }
        let grid = sum.expect("four corners");
        if t == 1 {
            Ok(grid)
        } else {
            grid.repeat((t, 1))
        }
    }

    /// 2-D rotary tables `[t·h·w, head_dim / 2]`: the first half of the frequencies turn with the
    /// patch row, the second half with the column, in merge-block order.
    fn rotary(&self, t: usize, h: usize, w: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let head_dim = self.config.hidden_size / self.config.num_heads;
        let quarter = head_dim / 4;
        let m = self.config.spatial_merge_size;
        let inv: Vec<f32> =
            (0..quarter).map(|k| 1.0 / 10_000f32.powf(2.0 * k as f32 / (head_dim / 2) as f32)).collect();
        let n = t * h * w;
        let (mut cos, mut sin) = (Vec::with_capacity(n * 2 * quarter), Vec::with_capacity(n * 2 * quarter));
        for _ in 0..t {
            for bh in 0..h / m {
                for bw in 0..w / m {
                    for ih in 0..m {
                        for iw in 0..m {
                            let (row, col) = ((bh * m + ih) as f32, (bw * m + iw) as f32);
                            for p in [row, col] {
                                for f in &inv {
                                    cos.push((p * f).cos());
                                    sin.push((p * f).sin());
                                }
                            }
                        }
                    }
                }
            }
        }
        let upload = |v: Vec<f32>| Tensor::from_vec(v, (n, 2 * quarter), &self.device)?.to_dtype(self.dtype);
        Ok((upload(cos)?, upload(sin)?))
    }
}

/// The (time, row, column) rotary positions of a prompt whose image placeholders have been expanded,
/// and the shift of the text positions that follow (`max position + 1 − prompt length`).
///
/// Text tokens advance all three axes together. An image's tokens sit on a `t × h/merge × w/merge`
/// grid starting at the position after the preceding text, and the text after it continues from one
/// past the largest position the image used.
pub fn rope_positions(prompt: &[u32], image_token: u32, grids: &[[usize; 3]], merge: usize) -> (Vec<[u32; 3]>, i64) {
    let mut positions = Vec::with_capacity(prompt.len());
    let mut next = 0u32;
    let mut images = grids.iter();
    let mut i = 0;
    while i < prompt.len() {
        if prompt[i] == image_token {
            if let Some(&[t, h, w]) = images.next() {
                let (gh, gw) = (h / merge, w / merge);
                let mut top = next;
                for ti in 0..t {
                    for y in 0..gh {
                        for x in 0..gw {
                            let p = [next + ti as u32, next + y as u32, next + x as u32];
                            top = top.max(p[0]).max(p[1]).max(p[2]);
                            positions.push(p);
                        }
                    }
                }
                i += t * gh * gw;
                next = top + 1;
                continue;
            }
        }
        positions.push([next; 3]);
        next += 1;
        i += 1;
    }
    positions.truncate(prompt.len());
    let delta = next as i64 - prompt.len() as i64;
    (positions, delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_text_image_text() {
        // 2 text tokens, an image of 1×4×6 patches (2×3 tokens after the 2×2 merge), 2 text tokens.
        let img = 9;
        let prompt = [1, 2, img, img, img, img, img, img, 3, 4];
        let (pos, delta) = rope_positions(&prompt, img, &[[1, 4, 6]], 2);
        assert_eq!(&pos[..2], &[[0, 0, 0], [1, 1, 1]]);
        // The image grid starts at position 2: rows 2..4, columns 2..5.
        assert_eq!(&pos[2..8], &[[2, 2, 2], [2, 2, 3], [2, 2, 4], [2, 3, 2], [2, 3, 3], [2, 3, 4]]);
        // Text resumes one past the largest image position (4).
        assert_eq!(&pos[8..], &[[5, 5, 5], [6, 6, 6]]);
        // Next text position 7 sits at slot 10: a delta of −3.
        assert_eq!(delta, -3);
    }

    /// A tower whose only meaningful weights are a position table of `side × side` rows.
    fn tower_with_positions(side: usize, width: usize) -> VisionTower {
        let config = VisionConfig {
            depth: 0,
            hidden_size: width,
            intermediate_size: width,
            num_heads: 1,
            in_channels: 3,
            patch_size: 2,
            spatial_merge_size: 2,
            temporal_patch_size: 1,
            out_hidden_size: width,
            num_position_embeddings: side * side,
            deepstack_visual_indexes: vec![],
        };
        let values: Vec<f32> = (0..side * side * width).map(|i| i as f32).collect();
        let pos_embed = Tensor::from_vec(values, (side * side, width), &Device::Cpu).unwrap();
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let merger = Merger::load(&config, false, vb.pp("merger")).unwrap();
        VisionTower {
            patch_weight: Tensor::zeros((12, width), DType::F32, &Device::Cpu).unwrap(),
            patch_bias: Tensor::zeros(width, DType::F32, &Device::Cpu).unwrap(),
            pos_embed,
            blocks: vec![],
            merger,
            deepstack: vec![],
            device: Device::Cpu,
            dtype: DType::F32,
            config,
        }
    }

    #[test]
    fn position_table_is_resampled_and_laid_out_by_merge_block() {
        let tower = tower_with_positions(4, 2);
        // A 4×4 grid matches the table: no interpolation, rows reordered into 2×2 merge blocks.
        let same = tower.position_embeddings(1, 4, 4).unwrap().to_vec2::<f32>().unwrap();
        let order = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15];
        for (row, &cell) in same.iter().zip(&order) {
            assert_eq!(row, &vec![2.0 * cell as f32, 2.0 * cell as f32 + 1.0]);
        }
        // A 2×2 grid samples the four corners of the table (linspace(0, 3, 2) = 0, 3).
        let corners = tower.position_embeddings(1, 2, 2).unwrap().to_vec2::<f32>().unwrap();
        let firsts: Vec<f32> = corners.iter().map(|r| r[0]).collect();
        assert_eq!(firsts, vec![0.0, 6.0, 24.0, 30.0]);
        // A 2×6 grid: columns at 0, 0.6, 1.2, 1.8, 2.4, 3 interpolate between table cells. Row 0,
        // column 0.6 is 0.4·cell(0,0) + 0.6·cell(0,1) = 0.6 (×2 for the first value) = 1.2.
        let wide = tower.position_embeddings(1, 2, 6).unwrap().to_vec2::<f32>().unwrap();
        assert!((wide[1][0] - 1.2).abs() < 1e-5, "{:?}", wide[1]);
    }

    #[test]
    fn text_only_positions_are_the_slots() {
        let (pos, delta) = rope_positions(&[5, 6, 7], 9, &[], 2);
        assert_eq!(pos, vec![[0, 0, 0], [1, 1, 1], [2, 2, 2]]);
        assert_eq!(delta, 0);
    }
}
