//! Where a decoder's linear weights live and which product runs them: quantized rows on candle's
//! quantized matmul or the int8 kernel, prompt rows on a dense copy (the model's dense kernel: sis's f32
//! or bf16 GEMM, or candle's f32 matmul) for models small enough to keep one.

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};

use super::StepInput;
use crate::engines::kernels::measure::Shape;
use crate::engines::kernels::quantized::{self, PackedQuant};
use crate::engines::kernels::{Int8, Kernels, Simd};
use crate::engines::nn::dense::Dense;

/// Dense copies are kept only for models whose linear weights fit in this many bytes as f32.
pub(super) const DENSE_BUDGET_BYTES: usize = 1 << 30;

/// What a chat checkpoint's weights are, as far as choosing kernels goes; read with its spec, so that
/// reports need not open the file again, and by the loader, so the two agree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatWeights {
    /// A GGUF file (quantized), rather than a safetensors folder (f32).
    pub gguf: bool,
    /// GGUF: prompt rows run on a dense copy of the linear weights: models whose linear weights take
    /// up to 1 GiB as f32, where the int8 kernel does not run. candle's quantized matmul is several
    /// times slower than a dense GEMM on prompt rows; the int8 kernel is faster than the dense copy
    /// (SmolLM2 on the AVX2 EPYC: 1 235-token prompt 2.31 s against 2.79 s, 8 streams 18 % more
    /// tokens/s) and needs no f32 copy of the weights in memory.
    pub prompt_copy: bool,
    /// GGUF: the types of the matrices the quantized products run on (linear layers and the output
    /// projection), each once, in the order met.
    pub types: Vec<GgmlDType>,
    /// Safetensors: the checkpoint has a vision tower (Qwen3-VL).
    pub vision: bool,
    /// GGUF: `(hidden, feed-forward)` widths, from the first block's `ffn_up` (the products the dense
    /// kernel is timed on).
    pub widths: Option<(usize, usize)>,
}

impl ChatWeights {
    /// Reads a GGUF file's tensor table.
    pub fn of_gguf(content: &Content) -> Self {
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        let linear = |name: &str| name.starts_with("blk.") && content.tensor_infos[name].shape.dims().len() == 2;
        let linear_bytes: usize =
            names.iter().filter(|n| linear(n)).map(|n| content.tensor_infos[*n].shape.elem_count() * 4).sum();
        let mut types = Vec::new();
        let output =
            if content.tensor_infos.contains_key("output.weight") { "output.weight" } else { "token_embd.weight" };
        for name in names.iter().filter(|n| linear(n) || n.as_str() == output) {
            let dtype = content.tensor_infos[*name].ggml_dtype;
            if !types.contains(&dtype) {
                types.push(dtype);
            }
        }
        let widths = content.tensor_infos.get("blk.0.ffn_up.weight").and_then(|t| match t.shape.dims() {
            &[ffn, hidden] => Some((hidden, ffn)),
            _ => None,
        });
        let prompt_copy = linear_bytes <= DENSE_BUDGET_BYTES && !quantized::supported();
        Self { gguf: true, prompt_copy, types, vision: false, widths }
    }

    /// The products the dense kernel runs, `(rows, out, in)`: a prompt chunk of `chunk` rows through
    /// the feed-forward, where prompt rows take a dense copy; none otherwise (nothing to measure).
    pub fn shapes(&self, chunk: usize) -> Vec<Shape> {
        match self.widths {
            Some((hidden, ffn)) if self.prompt_copy && chunk > 0 => vec![(chunk, ffn, hidden), (chunk, hidden, ffn)],
            _ => Vec::new(),
        }
    }

    /// Which implementation each hot operation runs with these weights and `kernels`.
    pub fn report(&self, kernels: Kernels) -> Vec<String> {
        let mut lines = Vec::new();
        if self.gguf {
            let (mut int8, mut reference) = (Vec::new(), Vec::new());
            for &dtype in &self.types {
                let kept = layout(dtype, kernels.int8);
                match kernels.int8.is_some() && packs(kept) {
                    true if quantized::native(kept) => int8.push(format!("{kept:?}")),
                    true => int8.push(format!("{kept:?} as 8-bit")),
                    false if kept == dtype => reference.push(format!("{dtype:?}")),
                    false => reference.push(format!("{dtype:?} as {kept:?}")),
                }
            }
            let mut products = Vec::new();
            for (kernel, names) in [(kernels.quantized(), int8), ("reference", reference)] {
                if !names.is_empty() {
                    products.push(format!("{kernel} ({})", names.join(", ")));
                }
            }
            lines.push(format!("quantized matmul: {}", products.join(", ")));
            // Float matrices take candle's matmul for every row; quantized ones get the dense copy.
            lines.push(match self.prompt_copy && self.types.iter().any(|&t| !float(t)) {
                true => format!("prompt rows: dense copy on {}", kernels.dense_report()),
                false => "prompt rows: as decode rows".to_string(),
            });
        } else {
            lines.push("matmul: reference (f32 weights)".to_string());
        }
        // The decoder's attention: the loops' build (f64 scores), the same bits on every build.
        lines.push(format!("attention: {}", kernels.simd.map_or("portable", Simd::name)));
        if self.vision {
            lines.push("vision tower: reference".to_string());
        }
        lines
    }
}

/// The type a GGUF matrix is kept in at load: where the int8 kernel runs, the file's own (the kernel
/// packs it); else candle's CPU kernels for Q4_1 / Q5_0 / Q5_1 are scalar, so those are re-quantized to
/// Q8_0, which has SIMD kernels. Q8_0 holds every 4- and 5-bit level of a block to within 1/254 of the
/// block's range, so the model is the same to within that rounding.
pub(super) fn layout(dtype: GgmlDType, int8: Option<Int8>) -> GgmlDType {
    match dtype {
        _ if int8.is_some() => dtype,
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => GgmlDType::Q8_0,
        _ => dtype,
    }
}

/// Whether a GGUF type holds floats (which need no dense copy).
fn float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Whether the int8 kernel takes matrices of this type: every quantized type (those it does not pack
/// as they are, [`quantized::native`], it re-quantizes to 8 bits per weight); floats stay on candle.
pub(super) fn packs(dtype: GgmlDType) -> bool {
    !float(dtype)
}

/// A linear layer's weight: quantized for decode rows, which are memory-bound, plus, for small models,
/// a dense copy (on the model's dense kernel) for prompt rows, where a dense GEMM runs several times faster
/// than quantized dot products. The path depends on what a row is (prompt or decode), never on the
/// other rows of the step, so a sequence's output does not depend on its company.
pub(super) struct Weight {
    quantized: Quantized,
    dense: Option<Dense>,
}

/// The quantized product: our int8 kernel where the CPU has it and the type allows, else candle's.
pub(super) enum Quantized {
    Packed(PackedQuant),
    Candle(QMatMul),
}

impl Quantized {
    pub(super) fn new(tensor: QTensor, int8: Option<Int8>) -> Result<Self> {
        if let Some(cpu) = int8.filter(|_| packs(tensor.dtype())) {
            if let Some(packed) = PackedQuant::from_qtensor(cpu, &tensor)? {
                return Ok(Quantized::Packed(packed));
            }
        }
        Ok(Quantized::Candle(QMatMul::from_qtensor(tensor)?))
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Quantized::Candle(q) => q.forward(x),
            Quantized::Packed(p) => crate::engines::nn::dense::map_rows(x, p.n(), |rows, m| p.forward(rows, m)),
        }
    }
}

/// Which rows of a packed step are prompt rows, and how to put the two groups back in order.
pub(super) struct RowSplit {
    decode: Tensor,
    prompt: Tensor,
    /// Position of each packed row in `[decode rows…, prompt rows…]`.
    inverse: Tensor,
    all_prompt: bool,
    any_prompt: bool,
}

impl RowSplit {
    pub(super) fn new(inputs: &[StepInput<'_>]) -> Result<Self> {
        let (mut decode, mut prompt) = (Vec::new(), Vec::new());
        let mut row = 0u32;
        for input in inputs {
            for _ in input.tokens {
                if input.prompt {
                    prompt.push(row)
                } else {
                    decode.push(row)
                }
                row += 1;
            }
        }
        let mut inverse = vec![0u32; row as usize];
        for (at, &r) in decode.iter().chain(&prompt).enumerate() {
            inverse[r as usize] = at as u32;
        }
        let (all_prompt, any_prompt) = (decode.is_empty(), !prompt.is_empty());
        let (d, p, n) = (decode.len(), prompt.len(), inverse.len());
        Ok(Self {
            decode: Tensor::from_vec(decode, d, &Device::Cpu)?,
            prompt: Tensor::from_vec(prompt, p, &Device::Cpu)?,
            inverse: Tensor::from_vec(inverse, n, &Device::Cpu)?,
            all_prompt,
            any_prompt,
        })
    }
}

impl Weight {
    /// An f32 weight (safetensors checkpoints): one path for every row.
    pub(super) fn new(weight: QMatMul) -> Self {
        Self { quantized: Quantized::Candle(weight), dense: None }
    }

    /// A GGUF weight, with a dense copy for prompt rows when `keep_dense` and the weight is quantized
    /// (float weights take candle's f32 matmul for every row, like safetensors checkpoints).
    pub(super) fn from_gguf(tensor: QTensor, keep_dense: bool, kernels: Kernels) -> Result<Self> {
        let dense = if keep_dense && !float(tensor.dtype()) {
            Some(Dense::new(&tensor.dequantize(&Device::Cpu)?, None, kernels.dense)?)
        } else {
            None
        };
        Ok(Self { quantized: Quantized::new(tensor, kernels.int8)?, dense })
    }

    pub(super) fn forward(&self, x: &Tensor, rows: &RowSplit) -> Result<Tensor> {
        let Some(w) = self.dense.as_ref().filter(|_| rows.any_prompt) else {
            return self.quantized.forward(x);
        };
        if rows.all_prompt {
            return w.forward(x);
        }
        let decode = self.quantized.forward(&x.index_select(&rows.decode, 0)?)?;
        let prompt = w.forward(&x.index_select(&rows.prompt, 0)?)?;
        Tensor::cat(&[decode, prompt], 0)?.index_select(&rows.inverse, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::kernels::STALE_BUILD;

    fn gguf(types: &[GgmlDType], prompt_copy: bool) -> ChatWeights {
        ChatWeights { gguf: true, prompt_copy, types: types.to_vec(), vision: false, widths: Some((64, 256)) }
    }

    #[test]
    fn without_the_int8_kernel_slow_types_become_q8_0_on_candle() {
        for (dtype, kept) in [
            (GgmlDType::Q4_1, GgmlDType::Q8_0),
            (GgmlDType::Q5_0, GgmlDType::Q8_0),
            (GgmlDType::Q4_0, GgmlDType::Q4_0),
            (GgmlDType::Q6K, GgmlDType::Q6K),
        ] {
            assert_eq!(layout(dtype, None), kept, "{dtype:?}");
        }
        let report = gguf(&[GgmlDType::Q4_1, GgmlDType::Q6K], true).report(Kernels::REFERENCE);
        assert_eq!(
            report,
            [
                "quantized matmul: reference (Q4_1 as Q8_0, Q6K)",
                "prompt rows: dense copy on reference",
                "attention: portable"
            ]
        );
        let big = gguf(&[GgmlDType::Q8_0], false).report(Kernels::REFERENCE);
        assert_eq!(big[1], "prompt rows: as decode rows");
        let floats = gguf(&[GgmlDType::F16], true).report(Kernels::REFERENCE);
        assert_eq!(floats[..2], ["quantized matmul: reference (F16)", "prompt rows: as decode rows"]);
        let vision = ChatWeights { vision: true, ..ChatWeights::default() }.report(Kernels::REFERENCE);
        assert_eq!(vision, ["matmul: reference (f32 weights)", "attention: portable", "vision tower: reference"]);
    }

    #[test]
    fn the_dense_kernel_is_timed_on_prompt_chunks_only_where_prompt_rows_have_a_dense_copy() {
        assert_eq!(gguf(&[GgmlDType::Q4_1], true).shapes(128), [(128, 256, 64), (128, 64, 256)]);
        assert!(gguf(&[GgmlDType::Q4_1], false).shapes(128).is_empty());
    }

    #[test]
    #[cfg_attr(not(sis_host_avx2), ignore = "needs AVX2")]
    fn the_int8_kernel_takes_every_quantized_type_and_leaves_floats() {
        let int8 = Some(Int8::Avx2(crate::engines::kernels::Avx2::detect().expect(STALE_BUILD)));
        assert_eq!(layout(GgmlDType::Q4_1, int8), GgmlDType::Q4_1);
        assert_eq!(layout(GgmlDType::Q5_1, int8), GgmlDType::Q5_1);
        let kernels = Kernels { int8, ..Kernels::REFERENCE };
        let report = gguf(&[GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::F16], true).report(kernels);
        assert_eq!(report[0], "quantized matmul: int8-avx2 (Q4K, Q6K as 8-bit), reference (F16)");
    }
}
