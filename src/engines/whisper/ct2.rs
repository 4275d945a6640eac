//! Reading CTranslate2 `model.bin` files (the faster-whisper format) into Hub-named tensors.
//!
//! Layout (little-endian): u32 version; a spec name string (version ≥ 2); a u32 spec revision
//! (version ≥ 3); u32 variable count, then per variable: name string, u8 rank, rank × u32 dims,
//! u8 dtype (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16), u32 byte count, raw bytes; then u32 alias
//! count and (alias, target) string pairs. A string is a u16 length and that many bytes, NUL-terminated.
//!
//! Quantized folders (`ct2-transformers-converter --quantization int8`, `int8_float16`, `int16`) store a
//! linear, convolution or embedding weight `X/weight` as integers beside `X/weight_scale`: one scale
//! per output row for int8, one for the whole matrix for int16; the weight is `integers / scale`. They
//! are dequantized as they are read, so every kernel sis has runs on them.

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use std::collections::HashMap;
use std::path::Path;

/// One stored variable.
pub struct Variable {
    /// Dimensions (empty for scalars).
    pub dims: Vec<usize>,
    /// Values widened to f32.
    pub values: Vec<f32>,
    /// Whether the values are integers of a quantized weight (i8 or i16), before their scale applies.
    quantized: bool,
}

/// Every variable of a model.bin, by CTranslate2 name (aliases resolved).
pub fn read(path: &Path) -> anyhow::Result<HashMap<String, Variable>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&bytes).with_context(|| format!("parsing CTranslate2 model {}", path.display()))
}

/// The dimensions of one variable of a model.bin, read from its header without reading the values
/// (they are skipped): what choosing kernels needs before the model loads.
pub fn dims_of(path: &Path, wanted: &str) -> anyhow::Result<Vec<usize>> {
    use std::io::{BufReader, Read};
    let mut file = BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let u32_ = |f: &mut BufReader<std::fs::File>| -> anyhow::Result<u32> {
        let mut b = [0u8; 4];
        f.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    };
    let string = |f: &mut BufReader<std::fs::File>| -> anyhow::Result<String> {
        let mut n = [0u8; 2];
        f.read_exact(&mut n)?;
        let mut raw = vec![0u8; u16::from_le_bytes(n) as usize];
        f.read_exact(&mut raw)?;
        Ok(String::from_utf8_lossy(raw.strip_suffix(&[0]).unwrap_or(&raw)).into_owned())
    };
    let version = u32_(&mut file)?;
    if version >= 2 {
        string(&mut file)?;
    }
    if version >= 3 {
        u32_(&mut file)?;
    }
    for _ in 0..u32_(&mut file)? {
        let name = string(&mut file)?;
        let mut rank = [0u8; 1];
        file.read_exact(&mut rank)?;
        let dims = (0..rank[0]).map(|_| u32_(&mut file).map(|d| d as usize)).collect::<anyhow::Result<Vec<_>>>()?;
        let mut dtype = [0u8; 1];
        file.read_exact(&mut dtype)?;
        let size = u32_(&mut file)?;
        if name == wanted {
            return Ok(dims);
        }
        file.seek_relative(size as i64)?;
    }
    bail!("{} has no variable {wanted}", path.display())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).context("truncated file")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> anyhow::Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }
    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn string(&mut self) -> anyhow::Result<String> {
        let n = self.u16()? as usize;
        let raw = self.take(n)?;
        Ok(String::from_utf8_lossy(raw.strip_suffix(&[0]).unwrap_or(raw)).into_owned())
    }
}

/// Parses the bytes of a model.bin.
pub fn parse(bytes: &[u8]) -> anyhow::Result<HashMap<String, Variable>> {
    let mut c = Cursor { bytes, at: 0 };
    let version = c.u32()?;
    if version > 6 {
        bail!("model.bin version {version} is newer than this reader (≤ 6)");
    }
    if version >= 2 {
        c.string()?;
    }
    if version >= 3 {
        c.u32()?;
    }
    let count = c.u32()? as usize;
    let mut vars = HashMap::with_capacity(count);
    for _ in 0..count {
        let name = c.string()?;
        let rank = c.u8()? as usize;
        let dims = (0..rank).map(|_| c.u32().map(|d| d as usize)).collect::<anyhow::Result<Vec<_>>>()?;
        let dtype = c.u8()?;
        let size = c.u32()? as usize;
        let raw = c.take(size)?;
        let values: Vec<f32> = match dtype {
            0 => raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect(),
            1 => raw.iter().map(|&b| b as i8 as f32).collect(),
            2 => raw.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as f32).collect(),
            3 => raw.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as f32).collect(),
            4 => raw.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            5 => raw.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => bail!("variable {name} has unknown dtype {other}"),
        };
        let expected: usize = dims.iter().product();
        if values.len() != expected.max(1) && !(dims.is_empty() && values.len() == 1) {
            bail!("variable {name}: {} values for dims {dims:?}", values.len());
        }
        vars.insert(name, Variable { dims, values, quantized: matches!(dtype, 1 | 2) });
    }
    dequantize(&mut vars)?;
    if let Ok(aliases) = c.u32() {
        for _ in 0..aliases {
            let (alias, target) = (c.string()?, c.string()?);
            if let Some(v) = vars.get(&target) {
                let copy = Variable { dims: v.dims.clone(), values: v.values.clone(), quantized: false };
                vars.insert(alias, copy);
            }
        }
    }
    Ok(vars)
}

/// Applies each `X/weight_scale` to its integer `X/weight` (see the module's notes) and drops the scales.
fn dequantize(vars: &mut HashMap<String, Variable>) -> anyhow::Result<()> {
    let scales: Vec<String> = vars.keys().filter(|k| k.ends_with("_scale")).cloned().collect();
    for name in scales {
        let target = name.trim_end_matches("_scale");
        let Some(weight) = vars.get(target).filter(|w| w.quantized) else {
            continue;
        };
        let rows = weight.dims.first().copied().unwrap_or(1).max(1);
        let scale = vars.remove(&name).expect("listed").values;
        let weight = vars.get_mut(target).expect("checked");
        let per_row = weight.values.len() / rows;
        match scale.len() {
            1 => weight.values.iter_mut().for_each(|v| *v /= scale[0]),
            n if n == rows => weight.values.chunks_mut(per_row).zip(&scale).for_each(|(row, s)| {
                row.iter_mut().for_each(|v| *v /= s);
            }),
            n => bail!("{name} has {n} scales for {rows} rows of {target}"),
        }
        weight.quantized = false;
    }
    if let Some((name, _)) = vars.iter().find(|(_, v)| v.quantized && v.dims.len() >= 2) {
        bail!("{name} is quantized but the model has no {name}_scale");
    }
    Ok(())
}

/// Shapes of a Whisper model read from its variables.
#[derive(Debug, Clone)]
pub struct WhisperShape {
    /// Mel bins (80, or 128 for large-v3).
    pub mels: usize,
    /// Width.
    pub width: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Encoder heads.
    pub encoder_heads: usize,
    /// Decoder heads.
    pub decoder_heads: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// Audio positions (1500).
    pub audio_positions: usize,
    /// Text positions (448).
    pub text_positions: usize,
}

/// Maps a Whisper model.bin to the Hub's tensor names (`model.encoder.layers.0.self_attn.q_proj.weight`,
/// …): fused Q/K/V and K/V are split, `gamma`/`beta` become `weight`/`bias`.
pub fn whisper_tensors(vars: &HashMap<String, Variable>) -> anyhow::Result<(HashMap<String, Tensor>, WhisperShape)> {
    let get = |name: &str| vars.get(name).with_context(|| format!("model.bin has no {name}"));
    let tensor = |v: &Variable| Tensor::from_vec(v.values.clone(), v.dims.as_slice(), &Device::Cpu);
    let count = |prefix: &str| {
        (0..).take_while(|i| vars.contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))).count()
    };
    let conv1 = get("encoder/conv1/weight")?;
    let embed = get("decoder/embeddings/weight")?;
    let heads = |name: &str, default: usize| vars.get(name).map(|v| v.values[0] as usize).unwrap_or(default);
    let width = embed.dims[1];
    let shape = WhisperShape {
        mels: conv1.dims[1],
        width,
        encoder_layers: count("encoder"),
        decoder_layers: count("decoder"),
        encoder_heads: heads("encoder/num_heads", width / 64),
        decoder_heads: heads("decoder/num_heads", width / 64),
        vocab: embed.dims[0],
        audio_positions: get("encoder/position_encodings/encodings")?.dims[0],
        text_positions: get("decoder/position_encodings/encodings")?.dims[0],
    };
    let mut out = HashMap::new();
    let mut put = |name: String, t: Tensor| {
        out.insert(name, t);
    };
    let norm = |put: &mut dyn FnMut(String, Tensor), from: &str, to: &str| -> anyhow::Result<()> {
        put(format!("{to}.weight"), tensor(get(&format!("{from}/gamma"))?)?);
        put(format!("{to}.bias"), tensor(get(&format!("{from}/beta"))?)?);
        Ok(())
    };
    let linear = |put: &mut dyn FnMut(String, Tensor), from: &str, to: &str| -> anyhow::Result<()> {
        put(format!("{to}.weight"), tensor(get(&format!("{from}/weight"))?)?);
        put(format!("{to}.bias"), tensor(get(&format!("{from}/bias"))?)?);
        Ok(())
    };
    // Fused projections are stacked along the output dimension.
    let split = |put: &mut dyn FnMut(String, Tensor), from: &str, to: &[&str]| -> anyhow::Result<()> {
        let w = tensor(get(&format!("{from}/weight"))?)?;
        let b = tensor(get(&format!("{from}/bias"))?)?;
        for (i, name) in to.iter().enumerate() {
            put(format!("{name}.weight"), w.narrow(0, i * width, width)?);
            if !name.ends_with("k_proj") {
                put(format!("{name}.bias"), b.narrow(0, i * width, width)?);
            }
        }
        Ok(())
    };
    for (side, layers) in [("encoder", shape.encoder_layers), ("decoder", shape.decoder_layers)] {
        for i in 0..layers {
            let (c, h) = (format!("{side}/layer_{i}"), format!("model.{side}.layers.{i}"));
            let qkv =
                [format!("{h}.self_attn.q_proj"), format!("{h}.self_attn.k_proj"), format!("{h}.self_attn.v_proj")];
            split(
                &mut put,
                &format!("{c}/self_attention/linear_0"),
                &qkv.iter().map(String::as_str).collect::<Vec<_>>(),
            )?;
            linear(&mut put, &format!("{c}/self_attention/linear_1"), &format!("{h}.self_attn.out_proj"))?;
            norm(&mut put, &format!("{c}/self_attention/layer_norm"), &format!("{h}.self_attn_layer_norm"))?;
            if side == "decoder" {
                linear(&mut put, &format!("{c}/attention/linear_0"), &format!("{h}.encoder_attn.q_proj"))?;
                let kv = [format!("{h}.encoder_attn.k_proj"), format!("{h}.encoder_attn.v_proj")];
                split(
                    &mut put,
                    &format!("{c}/attention/linear_1"),
                    &kv.iter().map(String::as_str).collect::<Vec<_>>(),
                )?;
                linear(&mut put, &format!("{c}/attention/linear_2"), &format!("{h}.encoder_attn.out_proj"))?;
                norm(&mut put, &format!("{c}/attention/layer_norm"), &format!("{h}.encoder_attn_layer_norm"))?;
            }
            linear(&mut put, &format!("{c}/ffn/linear_0"), &format!("{h}.fc1"))?;
            linear(&mut put, &format!("{c}/ffn/linear_1"), &format!("{h}.fc2"))?;
            norm(&mut put, &format!("{c}/ffn/layer_norm"), &format!("{h}.final_layer_norm"))?;
        }
        norm(&mut put, &format!("{side}/layer_norm"), &format!("model.{side}.layer_norm"))?;
    }
    linear(&mut put, "encoder/conv1", "model.encoder.conv1")?;
    linear(&mut put, "encoder/conv2", "model.encoder.conv2")?;
    put("model.encoder.embed_positions.weight".into(), tensor(get("encoder/position_encodings/encodings")?)?);
    put("model.decoder.embed_positions.weight".into(), tensor(get("decoder/position_encodings/encodings")?)?);
    put("model.decoder.embed_tokens.weight".into(), tensor(embed)?);
    let _ = DType::F32;
    Ok((out, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    #[test]
    fn parses_variables_dtypes_and_aliases() {
        let mut b = Vec::new();
        b.extend_from_slice(&6u32.to_le_bytes());
        string(&mut b, "WhisperSpec");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        string(&mut b, "a/weight");
        b.push(2);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        b.push(4);
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&f16::from_f32(1.5).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(-2.0).to_le_bytes());
        string(&mut b, "heads");
        b.push(0);
        b.push(2);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&6i16.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        string(&mut b, "b/weight");
        string(&mut b, "a/weight");
        let vars = parse(&b).unwrap();
        assert_eq!(vars["a/weight"].dims, vec![1, 2]);
        assert_eq!(vars["a/weight"].values, vec![1.5, -2.0]);
        assert_eq!(vars["heads"].values, vec![6.0]);
        assert_eq!(vars["b/weight"].values, vec![1.5, -2.0]);
        assert!(parse(&b[..b.len() - 30]).is_err());
    }

    /// An int8 weight with one scale per row, and an int16 one with a single scale, as CTranslate2's
    /// `--quantization int8` / `int16` store them: read back as `integers / scale`.
    #[test]
    fn quantized_weights_are_dequantized() {
        let mut b = Vec::new();
        b.extend_from_slice(&6u32.to_le_bytes());
        string(&mut b, "WhisperSpec");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        let var = |b: &mut Vec<u8>, name: &str, dims: &[u32], dtype: u8, raw: &[u8]| {
            string(b, name);
            b.push(dims.len() as u8);
            dims.iter().for_each(|d| b.extend_from_slice(&d.to_le_bytes()));
            b.push(dtype);
            b.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            b.extend_from_slice(raw);
        };
        var(&mut b, "q/weight", &[2, 2], 1, &[127, (-64i8) as u8, 10, 0]);
        let scales: Vec<u8> = [127.0f32, 10.0].iter().flat_map(|s| s.to_le_bytes()).collect();
        var(&mut b, "q/weight_scale", &[2], 0, &scales);
        let wide: Vec<u8> = [1024i16, -512].iter().flat_map(|v| v.to_le_bytes()).collect();
        var(&mut b, "w/weight", &[1, 2], 2, &wide);
        var(&mut b, "w/weight_scale", &[], 0, &1024f32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        string(&mut b, "p/weight");
        string(&mut b, "q/weight");
        let vars = parse(&b).unwrap();
        assert_eq!(vars["q/weight"].values, vec![1.0, -64.0 / 127.0, 1.0, 0.0]);
        assert_eq!(vars["p/weight"].values, vars["q/weight"].values, "aliases see the dequantized values");
        assert_eq!(vars["w/weight"].values, vec![1.0, -0.5]);
        assert!(!vars.contains_key("q/weight_scale"));
    }
}
