//! Run-time device selection over compile-time backends.
//!
//! Model and loss code are generic over `B: ModelBackend`; a [`DeviceSpec`] picks one monomorphised
//! entry point per compiled-in backend (`flex`, `ndarray`, `wgpu`, `cuda`), so there is no dynamic
//! dispatch on the hot path. A device whose backend feature was not compiled in is a clear error
//! that names the feature.

use crate::model::{ModelBackend, TrainBackend};
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A device named on the command line: `flex`, `ndarray`, `wgpu[:N]`, `cuda[:N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn-flex, the pure-Rust CPU backend (`cpu` is an alias).
    Flex,
    /// burn-ndarray, burn's legacy CPU backend.
    NdArray,
    /// A wgpu adapter: the default one, or the N-th discrete GPU.
    Wgpu(Option<usize>),
    /// The N-th CUDA GPU.
    Cuda(usize),
}

impl DeviceSpec {
    /// The best device this build can use: CUDA, then wgpu, then flex, then ndarray.
    #[allow(unreachable_code)]
    pub fn best_available() -> Self {
        #[cfg(feature = "cuda")]
        return DeviceSpec::Cuda(0);
        #[cfg(feature = "wgpu")]
        return DeviceSpec::Wgpu(None);
        #[cfg(feature = "flex")]
        return DeviceSpec::Flex;
        DeviceSpec::NdArray
    }

    /// The Cargo feature that provides this device.
    pub fn feature(&self) -> &'static str {
        match self {
            DeviceSpec::Flex => "flex",
            DeviceSpec::NdArray => "ndarray",
            DeviceSpec::Wgpu(_) => "wgpu",
            DeviceSpec::Cuda(_) => "cuda",
        }
    }

    /// Whether this build includes the device's backend.
    pub fn is_compiled(&self) -> bool {
        match self {
            DeviceSpec::Flex => cfg!(feature = "flex"),
            DeviceSpec::NdArray => cfg!(feature = "ndarray"),
            DeviceSpec::Wgpu(_) => cfg!(feature = "wgpu"),
            DeviceSpec::Cuda(_) => cfg!(feature = "cuda"),
        }
    }

    fn not_compiled(&self) -> Error {
        let f = self.feature();
        Error::Device(format!(
            "device `{self}` needs the `{f}` feature, which this build lacks: rebuild with \
             `cargo build --release --features {f}` (compiled-in backends: {})",
            compiled_backends().join(", ")
        ))
    }

    /// Runs `f` on this device's backend.
    pub fn run<F: BackendFn>(&self, f: F) -> Result<F::Output> {
        match *self {
            #[cfg(feature = "flex")]
            DeviceSpec::Flex => Ok(f.call::<burn::backend::Flex>(Default::default())),
            #[cfg(feature = "ndarray")]
            DeviceSpec::NdArray => Ok(f.call::<burn::backend::NdArray>(Default::default())),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu(i) => Ok(f.call::<burn::backend::Wgpu>(wgpu_device(i))),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(i) => {
                Ok(f.call::<burn::backend::Cuda>(burn::backend::cuda::CudaDevice::new(i)))
            }
            #[allow(unreachable_patterns)]
            _ => Err(self.not_compiled()),
        }
    }

    /// Runs `f` on this device's backend wrapped in burn's autodiff (for training).
    pub fn run_autodiff<F: AutodiffBackendFn>(&self, f: F) -> Result<F::Output> {
        use burn::backend::Autodiff;
        match *self {
            #[cfg(feature = "flex")]
            DeviceSpec::Flex => Ok(f.call::<Autodiff<burn::backend::Flex>>(Default::default())),
            #[cfg(feature = "ndarray")]
            DeviceSpec::NdArray => {
                Ok(f.call::<Autodiff<burn::backend::NdArray>>(Default::default()))
            }
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu(i) => Ok(f.call::<Autodiff<burn::backend::Wgpu>>(wgpu_device(i))),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(i) => Ok(
                f.call::<Autodiff<burn::backend::Cuda>>(burn::backend::cuda::CudaDevice::new(i))
            ),
            #[allow(unreachable_patterns)]
            _ => Err(self.not_compiled()),
        }
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device(index: Option<usize>) -> burn::backend::wgpu::WgpuDevice {
    use burn::backend::wgpu::WgpuDevice;
    match index {
        None => WgpuDevice::DefaultDevice,
        Some(i) => WgpuDevice::DiscreteGpu(i),
    }
}

/// The backend features this binary was built with.
pub fn compiled_backends() -> Vec<&'static str> {
    [
        (cfg!(feature = "flex"), "flex"),
        (cfg!(feature = "ndarray"), "ndarray"),
        (cfg!(feature = "wgpu"), "wgpu"),
        (cfg!(feature = "cuda"), "cuda"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Flex => write!(f, "flex"),
            DeviceSpec::NdArray => write!(f, "ndarray"),
            DeviceSpec::Wgpu(None) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// Parses a device name whether or not this build has its backend (for planning; running
    /// on it is still refused by [`DeviceSpec::run`]).
    pub fn parse_any(s: &str) -> Result<Self> {
        let bad = || {
            Error::Device(format!(
                "unknown device `{s}`: expected flex (or cpu), ndarray, wgpu, wgpu:N, cuda or cuda:N"
            ))
        };
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => (n, Some(i.parse::<usize>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let spec = match (name.to_ascii_lowercase().as_str(), index) {
            ("flex" | "cpu", None) => DeviceSpec::Flex,
            ("ndarray", None) => DeviceSpec::NdArray,
            ("wgpu", i) => DeviceSpec::Wgpu(i),
            ("cuda", i) => DeviceSpec::Cuda(i.unwrap_or(0)),
            _ => return Err(bad()),
        };
        Ok(spec)
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let spec = Self::parse_any(s)?;
        if !spec.is_compiled() {
            return Err(spec.not_compiled());
        }
        Ok(spec)
    }
}

/// A computation generic over the backend, run by [`DeviceSpec::run`].
pub trait BackendFn {
    /// What the computation returns.
    type Output;
    /// Runs on backend `B` and `device`.
    fn call<B: ModelBackend>(self, device: B::Device) -> Self::Output;
}

/// A training computation generic over an autodiff backend, run by [`DeviceSpec::run_autodiff`].
pub trait AutodiffBackendFn {
    /// What the computation returns.
    type Output;
    /// Runs on autodiff backend `B` and `device`.
    fn call<B: TrainBackend>(self, device: B::Device) -> Self::Output;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("flex".parse::<DeviceSpec>().unwrap(), DeviceSpec::Flex);
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Flex);
        assert!("tpu:0"
            .parse::<DeviceSpec>()
            .unwrap_err()
            .to_string()
            .contains("unknown device"));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn missing_feature_is_named() {
        let e = DeviceSpec::Cuda(1).not_compiled().to_string();
        assert!(
            e.contains("`cuda:1` needs the `cuda` feature") && e.contains("--features cuda"),
            "{e}"
        );
        if !cfg!(feature = "ndarray") {
            let e = "ndarray".parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains("--features ndarray"), "{e}");
        }
    }
}
