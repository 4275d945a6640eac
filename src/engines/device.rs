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

/// Where a model asked to run on `name` will run, when its engine runs on the CPU only (chat, speech
/// and vision, for now): the CPU for `cpu` and `auto` (said in the log when a GPU was there to
/// take); an error naming the model's kind for a GPU, rather than a CPU server where a GPU was asked.
pub fn cpu_only(name: DeviceName, kind: &str) -> anyhow::Result<()> {
    match name {
        DeviceName::Cpu => Ok(()),
        DeviceName::Auto => {
            if !name.is_cpu() {
                tracing::warn!(kind, "device auto: a GPU is present, but {kind} models run on the CPU in this version");
            }
            Ok(())
        }
        DeviceName::Cuda(_) | DeviceName::Metal => anyhow::bail!(
            "{kind} models run on the CPU only in this version of sis (embeddings and rerank run on GPUs); \
             set device = \"cpu\" or \"auto\" for this model"
        ),
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
    fn cpu_only_engines_refuse_gpus_and_take_auto() {
        assert!(cpu_only(DeviceName::Cpu, "chat").is_ok() && cpu_only(DeviceName::Auto, "chat").is_ok());
        let refused = cpu_only(DeviceName::Cuda(0), "chat").unwrap_err().to_string();
        assert!(refused.contains("chat models run on the CPU only"), "{refused}");
        if !cfg!(feature = "cuda") {
            let missing = available(DeviceName::Cuda(1)).unwrap_err().to_string();
            assert!(missing.contains("--features cuda"), "{missing}");
        }
    }
}
