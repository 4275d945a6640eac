//! Mapping the configured device name to a candle device.

use candle_core::Device;

/// Whether [`open`] gives the CPU for this name (cheap: opens nothing).
pub fn is_cpu(name: &str) -> bool {
    match name {
        "cpu" => true,
        "auto" => !candle_core::utils::cuda_is_available() && !candle_core::utils::metal_is_available(),
        _ => false,
    }
}

/// Opens `cpu`, `cuda[:i]`, `metal` or `auto` (the best compiled-in accelerator, else CPU).
pub fn open(name: &str) -> candle_core::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                Device::new_cuda(0)
            } else if candle_core::utils::metal_is_available() {
                Device::new_metal(0)
            } else {
                Ok(Device::Cpu)
            }
        }
        "metal" => Device::new_metal(0),
        "cuda" => Device::new_cuda(0),
        other => {
            let index = other
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .ok_or_else(|| candle_core::Error::Msg(format!("unknown device {other:?}")))?;
            Device::new_cuda(index)
        }
    }
}
