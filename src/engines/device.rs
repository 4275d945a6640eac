//! Devices as operators name them, and opening them as candle devices.
//!
//! [`DeviceName`] is the one grammar for `MODEL_DEVICE` / `--device`: configuration parses it here and
//! engines open what it names.

use candle_core::Device;
use std::fmt;
use std::str::FromStr;

/// `cpu`, `cuda[:i]`, `metal` or `auto` (the best compiled-in accelerator, else the CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceName {
    /// The CPU.
    #[default]
    Cpu,
    /// A GPU when the build has one and one is present, else the CPU.
    Auto,
    /// The CUDA device with this index (`cuda` is `cuda:0`).
    Cuda(usize),
    /// The Metal device.
    Metal,
}

impl FromStr for DeviceName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "cpu" => Ok(DeviceName::Cpu),
            "auto" => Ok(DeviceName::Auto),
            "metal" => Ok(DeviceName::Metal),
            "cuda" => Ok(DeviceName::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceName::Cuda)
                .ok_or_else(|| format!("unknown device {other:?}: expected cpu, cuda[:i], metal or auto")),
        }
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceName::Cpu => f.write_str("cpu"),
            DeviceName::Auto => f.write_str("auto"),
            DeviceName::Metal => f.write_str("metal"),
            DeviceName::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl serde::Serialize for DeviceName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks that this build and machine have the device `name` names, with a message saying what is
/// missing (a build without the GPU feature, or no such GPU).
pub fn available(name: DeviceName) -> anyhow::Result<()> {
    let (feature, compiled) = match name {
        DeviceName::Cpu | DeviceName::Auto => return Ok(()),
        DeviceName::Cuda(_) => ("cuda", cfg!(feature = "cuda")),
        DeviceName::Metal => ("metal", cfg!(feature = "metal")),
    };
    if !compiled {
        anyhow::bail!("device {name} needs a build with `--features {feature}`; this one runs on the CPU only");
    }
    open(name).map(|_| ()).map_err(|e| anyhow::anyhow!("device {name} cannot be opened: {e}"))
}

impl DeviceName {
    /// The device [`open`] gives for this name: `auto` becomes the GPU it picks, or `cpu`.
    pub fn resolved(self) -> DeviceName {
        match self {
            DeviceName::Auto if candle_core::utils::cuda_is_available() => DeviceName::Cuda(0),
            DeviceName::Auto if candle_core::utils::metal_is_available() => DeviceName::Metal,
            DeviceName::Auto => DeviceName::Cpu,
            name => name,
        }
    }

    /// Whether [`open`] gives the CPU for this name (cheap: opens nothing).
    pub fn is_cpu(self) -> bool {
        match self {
            DeviceName::Cpu => true,
            DeviceName::Auto => !candle_core::utils::cuda_is_available() && !candle_core::utils::metal_is_available(),
            DeviceName::Cuda(_) | DeviceName::Metal => false,
        }
    }
}

/// Opens the named device.
pub fn open(name: DeviceName) -> candle_core::Result<Device> {
    match name {
        DeviceName::Cpu => Ok(Device::Cpu),
        DeviceName::Auto => {
            if candle_core::utils::cuda_is_available() {
                Device::new_cuda(0)
            } else if candle_core::utils::metal_is_available() {
                Device::new_metal(0)
            } else {
                Ok(Device::Cpu)
            }
        }
        DeviceName::Metal => Device::new_metal(0),
        DeviceName::Cuda(index) => Device::new_cuda(index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in ["cpu", "auto", "metal", "cuda:0", "cuda:3"] {
            assert_eq!(name.parse::<DeviceName>().unwrap().to_string(), name);
        }
        assert_eq!("cuda".parse::<DeviceName>().unwrap(), DeviceName::Cuda(0));
        assert!("tpu".parse::<DeviceName>().is_err());
        assert!("cuda:x".parse::<DeviceName>().is_err());
    }

    #[test]
    fn a_missing_device_is_named_with_what_is_missing() {
        assert_eq!(DeviceName::Cpu.resolved(), DeviceName::Cpu);
        if !cfg!(feature = "cuda") {
            assert_eq!(DeviceName::Auto.resolved(), DeviceName::Cpu);
            let missing = available(DeviceName::Cuda(1)).unwrap_err().to_string();
            assert!(missing.contains("--features cuda"), "{missing}");
        }
    }
}

/// A GPU's memory as its driver counts it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Free now (for every process on the device).
    pub free: u64,
    /// The device's whole memory.
    pub total: u64,
}

/// The memory of `device`; `None` for the CPU, or where the driver cannot say.
pub fn memory(device: &Device) -> Option<Memory> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        use candle_core::cuda_backend::cudarc::driver::result::mem_get_info;
        cuda.cuda_stream().context().bind_to_thread().ok()?;
        let (free, total) = mem_get_info().ok()?;
        return Some(Memory { free: free as u64, total: total as u64 });
    }
    let _ = device;
    None
}

/// Device memory the loaded models hold, per device name (`cuda:0`), as measured when they loaded.
static RESERVED: std::sync::Mutex<std::collections::BTreeMap<String, (Device, u64)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The memory a loaded model holds on its device, counted in [`reserved`] until it is dropped.
#[derive(Debug)]
pub struct Reservation {
    device: String,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, held)) = reserved.get_mut(&self.device) {
            *held = held.saturating_sub(self.bytes);
        }
    }
}

/// A model being loaded onto a device: started after checking that the device has room for its
/// weights, finished with the [`Reservation`] of the memory the load took.
pub struct Loading {
    device: Device,
    name: String,
    before: Option<Memory>,
}

impl Loading {
    /// Checks that `device` has at least `weights` bytes free (the size of the weight files), so a
    /// model that cannot fit fails with a clear message rather than an allocation error part-way.
    pub fn start(device: &Device, weights: u64) -> anyhow::Result<Self> {
        let name = DeviceName::from(device).to_string();
        let before = memory(device);
        if let Some(m) = before {
            if weights > m.free {
                anyhow::bail!(
                    "the model's weights take {} MiB and {name} has {} MiB free of {} MiB",
                    weights >> 20,
                    m.free >> 20,
                    m.total >> 20
                );
            }
        }
        Ok(Self { device: device.clone(), name, before })
    }

    /// The memory the load took (free before less free now), reserved until the result drops.
    pub fn finish(self) -> Reservation {
        let bytes = match (self.before, memory(&self.device)) {
            (Some(before), Some(after)) => before.free.saturating_sub(after.free),
            _ => 0,
        };
        if self.before.is_some() {
            tracing::info!(device = %self.name, mib = bytes >> 20, "model loaded into device memory");
        }
        if !self.device.is_cpu() {
            let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
            reserved.entry(self.name.clone()).or_insert_with(|| (self.device.clone(), 0)).1 += bytes;
        }
        Reservation { device: self.name, bytes }
    }
}

/// One GPU's memory as `/metrics` shows it.
#[derive(Debug, Clone)]
pub struct Usage {
    /// `cuda:0`.
    pub device: String,
    /// What the driver says, if it can.
    pub memory: Option<Memory>,
    /// What the loaded models hold.
    pub reserved: u64,
}

/// The memory of every GPU a model was loaded on.
pub fn usage() -> Vec<Usage> {
    let devices: Vec<(String, Device, u64)> = RESERVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(name, (device, bytes))| (name.clone(), device.clone(), *bytes))
        .collect();
    devices.into_iter().map(|(device, d, reserved)| Usage { memory: memory(&d), device, reserved }).collect()
}

impl From<&Device> for DeviceName {
    /// The name of an opened device.
    fn from(device: &Device) -> Self {
        match device.location() {
            candle_core::DeviceLocation::Cpu => DeviceName::Cpu,
            candle_core::DeviceLocation::Cuda { gpu_id } => DeviceName::Cuda(gpu_id),
            candle_core::DeviceLocation::Metal { .. } => DeviceName::Metal,
        }
    }
}

/// The size of the weight files in `dir` (or of the file `path`): what loading them needs at least.
pub fn weight_bytes(path: &std::path::Path) -> u64 {
    if path.is_file() {
        return path.metadata().map(|m| m.len()).unwrap_or(0);
    }
    let weights = |p: &std::path::Path| p.extension().is_some_and(|e| e == "safetensors" || e == "gguf" || e == "bin");
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| weights(p))
                .filter_map(|p| p.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
