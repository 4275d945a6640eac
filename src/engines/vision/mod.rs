//! Vision-language models: the Qwen3-VL vision tower and the prompt positions of its images.

pub mod qwen3_vl;
