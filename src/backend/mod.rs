//! The only backend-specific code: choosing a device at run time and running generic code on
//! the matching burn backend, and the CPU backend's fast paths (`cpu_matmul`, `attention`,
//! `frozen_linear`, `swiglu`, `rms_norm`, `rope`, `host_term`; decoding's small jobs on
//! `spin_pool`). Everything else is generic over `B: Backend`.

pub(crate) mod attention;
mod autodiff_op;
pub(crate) mod cpu_matmul;
pub(crate) mod frozen_linear;
pub(crate) mod host_term;
pub(crate) mod rms_norm;
pub(crate) mod rope;
mod spin_pool;
pub(crate) mod swiglu;

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::Backend;

use crate::error::{Error, Result};

/// `--device cpu | cuda[:N] | tch-cpu | tch-cuda[:N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn's `NdArray` backend on the host (`cpu`).
    Cpu,
    /// burn's CUDA (cubecl) backend on GPU N (`cuda`, `cuda:N`; N defaults to 0).
    Cuda(usize),
    /// burn's LibTorch backend on the host (`tch-cpu`).
    TchCpu,
    /// burn's LibTorch backend on CUDA GPU N (`tch-cuda`, `tch-cuda:N`).
    TchCuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Device {
            device: s.into(),
            what: "expected cpu, cuda, cuda:N, tch-cpu, tch-cuda or tch-cuda:N".into(),
        };
        let index = |rest: &str| -> Result<usize> {
            match rest.strip_prefix(':') {
                None if rest.is_empty() => Ok(0),
                Some(n) => n.parse().map_err(|_| bad()),
                None => Err(bad()),
            }
        };
        Ok(match s {
            "cpu" => Self::Cpu,
            "tch-cpu" => Self::TchCpu,
            _ if s.starts_with("tch-cuda") => Self::TchCuda(index(&s["tch-cuda".len()..])?),
            _ if s.starts_with("cuda") => Self::Cuda(index(&s["cuda".len()..])?),
            _ => return Err(bad()),
        })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::TchCpu => write!(f, "tch-cpu"),
            Self::TchCuda(i) => write!(f, "tch-cuda:{i}"),
        }
    }
}

/// Code that runs on whichever backend the user picked.
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs the task on backend `B`, on `device`.
    fn run<B: Backend>(self, device: B::Device) -> Result<Self::Output>;
}

/// Code that trains: runs on the autodiff wrapper of the chosen backend.
pub trait AutodiffTask {
    /// What the task returns.
    type Output;
    /// Runs the task on the autodiff backend `B`, on `device`.
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        self,
        device: B::Device,
    ) -> Result<Self::Output>;
}

/// [`run_on`] for training code.
pub fn run_autodiff_on<T: AutodiffTask>(spec: DeviceSpec, task: T) -> Result<T::Output> {
    use burn::backend::Autodiff;
    match spec {
        DeviceSpec::Cpu => {
            task.run::<Autodiff<burn::backend::NdArray>>(burn::backend::ndarray::NdArrayDevice::Cpu)
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(i) => {
            check_cuda_driver(&spec)?;
            task.run::<Autodiff<burn::backend::Cuda>>(burn::backend::cuda::CudaDevice::new(i))
        }
        #[cfg(feature = "tch")]
        DeviceSpec::TchCpu => task
            .run::<Autodiff<burn::backend::LibTorch>>(burn::backend::libtorch::LibTorchDevice::Cpu),
        #[cfg(feature = "tch")]
        DeviceSpec::TchCuda(i) => {
            check_cuda_driver(&spec)?;
            task.run::<Autodiff<burn::backend::LibTorch>>(
                burn::backend::libtorch::LibTorchDevice::Cuda(i),
            )
        }
        #[allow(unreachable_patterns)]
        other => run_on(other, Unreachable).map(|_| unreachable!()),
    }
}

/// Lets [`run_autodiff_on`] reuse [`run_on`]'s "feature not compiled in" message.
struct Unreachable;
impl BackendTask for Unreachable {
    type Output = ();
    fn run<B: Backend>(self, _: B::Device) -> Result<()> {
        unreachable!("only reached for backends that are not compiled in")
    }
}

/// Checks that the CUDA driver library loads; cubecl would otherwise panic on a worker thread.
pub fn check_cuda_driver(spec: &DeviceSpec) -> Result<()> {
    // SAFETY: loading the driver library runs its initialisers only; we unload it at once.
    let lib = unsafe { libloading::Library::new("libcuda.so.1") }
        .or_else(|_| unsafe { libloading::Library::new("libcuda.so") });
    match lib {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::Device {
            device: spec.to_string(),
            what: format!("no CUDA driver could be loaded ({e}); use --device cpu"),
        }),
    }
}

/// Runs `task` on the backend `spec` names, after checking that it is compiled in and usable.
pub fn run_on<T: BackendTask>(spec: DeviceSpec, task: T) -> Result<T::Output> {
    match spec {
        DeviceSpec::Cpu => task.run::<burn::backend::NdArray>(burn::backend::ndarray::NdArrayDevice::Cpu),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(i) => {
            check_cuda_driver(&spec)?;
            task.run::<burn::backend::Cuda>(burn::backend::cuda::CudaDevice::new(i))
        }
        #[cfg(feature = "tch")]
        DeviceSpec::TchCpu => task.run::<burn::backend::LibTorch>(burn::backend::libtorch::LibTorchDevice::Cpu),
        #[cfg(feature = "tch")]
        DeviceSpec::TchCuda(i) => {
            check_cuda_driver(&spec)?;
            task.run::<burn::backend::LibTorch>(burn::backend::libtorch::LibTorchDevice::Cuda(i))
        }
        #[allow(unreachable_patterns)]
        other => Err(Error::Device {
            device: other.to_string(),
            what: format!(
                "this ddp-run was built without the `{}` feature (cargo build --release --features {})",
                feature_of(other),
                feature_of(other)
            ),
        }),
    }
}

fn feature_of(spec: DeviceSpec) -> &'static str {
    match spec {
        DeviceSpec::Cpu => "",
        DeviceSpec::Cuda(_) => "cuda",
        DeviceSpec::TchCpu | DeviceSpec::TchCuda(_) => "tch",
    }
}

/// Build flags worth printing beside a benchmark.
pub fn build_info() -> String {
    let mut f = vec![];
    if cfg!(feature = "cuda") {
        f.push("cuda");
    }
    if cfg!(feature = "tch") {
        f.push("tch");
    }
    format!(
        "{} build, features [{}], {} threads",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        f.join(", "),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )
}

/// Whether tensors of `B` live in host memory (the ndarray backend), so that a host loop over
/// their data costs a copy, not a device transfer.
pub fn on_host<B: Backend>() -> bool {
    fast_paths()
        && std::any::TypeId::of::<B::FloatTensorPrimitive>()
            == std::any::TypeId::of::<burn_ndarray::NdArrayTensor>()
}

/// The values of a float tensor in row-major order. On the ndarray backend an in-memory copy
/// of the array (burn's `into_data` walks a strided array element by element: ~0.3 s for the
/// `[127, 49152]` logits of one training block); elsewhere `into_data`.
pub fn host_f32<B: Backend, const D: usize>(t: burn::tensor::Tensor<B, D>) -> Vec<f32> {
    use burn::tensor::TensorPrimitive;
    if let TensorPrimitive::Float(p) = t.clone().into_primitive() {
        if let Some(burn_ndarray::NdArrayTensor::F32(a)) = cpu_matmul::cast(p) {
            let v = a.view();
            return match v.as_slice() {
                Some(s) => s.to_vec(),
                None => v.iter().copied().collect(),
            };
        }
    }
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data")
}

static REFERENCE_OPS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the CPU fast paths off (`true`) or on again: every op then takes burn's own tensor
/// ops, as before the fast paths existed. For equivalence tests and A/B timings; also set at
/// start-up by `DDP_REFERENCE_OPS=1`.
pub fn set_reference_ops(on: bool) {
    REFERENCE_OPS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the CPU fast paths may run (see [`set_reference_ops`]).
pub fn fast_paths() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let env = *ENV.get_or_init(|| std::env::var_os("DDP_REFERENCE_OPS").is_some_and(|v| v != "0"));
    !env && !REFERENCE_OPS.load(std::sync::atomic::Ordering::Relaxed)
}
