//! Choosing where tensors live: `cpu`, `cuda` or `cuda:N`, as written on the command line or in a recipe.
//!
//! CUDA is a cargo feature (`cuda`, off by default). A build without it still parses `cuda` so that
//! the error can say how to get a CUDA build instead of calling the name unknown. A CUDA build linked
//! against NVIDIA's driver stub (how it is built on machines without a GPU) loads everywhere, and the
//! stub answers every driver call with `CUDA_ERROR_STUB_LIBRARY`; that is reported as "no GPU here".
//!
//! Open a device once and clone the [`candle_core::Device`]: candle gives every `Device::new_cuda`
//! its own identity, and tensors from two such devices cannot be mixed even on the same GPU.
//!
//! ```
//! use rdrop_seq2seq::device::{parse_device, DeviceSpec};
//! let dev = parse_device("cpu").unwrap();
//! assert!(dev.is_cpu());
//! assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
//! ```

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// Why a device could not be named or opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The text is not `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device `{spec}`: expected `cpu`, `cuda` or `cuda:N` (N = GPU index, e.g. `cuda:0`)")]
    Unknown {
        /// The text as given.
        spec: String,
    },
    /// A CUDA device was asked of a binary compiled without the `cuda` feature.
    #[error(
        "device `{spec}`: this rdrop was built without CUDA; build with scripts/build-cuda.sh \
         (or `cargo build --release --features cuda` where a CUDA toolkit is installed)"
    )]
    NotCompiled {
        /// The text as given.
        spec: String,
    },
    /// The CUDA driver library is NVIDIA's link-time stub: this machine has no NVIDIA driver.
    #[error(
        "device `{spec}`: no NVIDIA driver on this machine (libcuda is the link-time stub: \
         CUDA_ERROR_STUB_LIBRARY); run on a machine with an NVIDIA GPU, or use `--device cpu`"
    )]
    StubDriver {
        /// The text as given.
        spec: String,
    },
    /// The driver works but has no GPU with this index.
    #[error("device `{spec}`: no CUDA GPU with index {ordinal} on this machine ({code})")]
    NoGpu {
        /// The text as given.
        spec: String,
        /// The GPU index asked for.
        ordinal: usize,
        /// The driver's error name, e.g. `CUDA_ERROR_NO_DEVICE`.
        code: String,
    },
    /// Any other failure while opening the GPU (driver too old, out of memory, ...).
    #[error("device `{spec}`: cannot open CUDA GPU {ordinal}: {cause}")]
    Cuda {
        /// The text as given.
        spec: String,
        /// The GPU index asked for.
        ordinal: usize,
        /// candle's error, which carries the driver's. Part of the message and deliberately not
        /// the `source` (which would print it twice): callers keep this error as text.
        cause: candle_core::Error,
    },
}

/// A parsed device name, before anything is opened: what recipes and flags hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The host CPU.
    Cpu,
    /// The CUDA GPU with this index (`cuda` means `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(spec: &str) -> Result<Self, DeviceError> {
        let unknown = || DeviceError::Unknown {
            spec: spec.to_string(),
        };
        let s = spec.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(unknown)?;
                // `usize::from_str` accepts a leading `+`; a device index never has one.
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(unknown());
                }
                n.parse().map(DeviceSpec::Cuda).map_err(|_| unknown())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. Call once per process and clone the result (see the module docs).
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => open_cuda(&self.to_string(), ordinal),
        }
    }
}

/// Parses `cpu`, `cuda` or `cuda:N` and opens that device.
pub fn parse_device(spec: &str) -> Result<Device, DeviceError> {
    let parsed: DeviceSpec = spec.parse()?;
    match parsed {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(ordinal) => open_cuda(spec.trim(), ordinal),
    }
}

/// The name of an opened device, as [`parse_device`] accepts it (`cpu`, `cuda:0`, ...), for logs.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// True when this binary has CUDA and GPU 0 opens. Tests use it to skip CUDA cases.
pub fn cuda_available() -> bool {
    cuda_unavailable_reason().is_none()
}

/// Why GPU 0 cannot be used here (`None` when it can): the message a skipped CUDA test prints.
pub fn cuda_unavailable_reason() -> Option<String> {
    // Opening a context costs ~100 ms on a real GPU; tests ask many times, the answer never changes.
    static REASON: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    REASON
        .get_or_init(|| parse_device("cuda:0").err().map(|e| e.to_string()))
        .clone()
}

/// For CUDA tests: GPU 0, opened once per process, or `None` after printing why the test `test`
/// skips. With `RDROP_REQUIRE_CUDA=1` (scripts/gpu-check.sh sets it) a missing GPU panics instead.
/// `RDROP_CUDA_TESTS_ON_CPU=1` hands out the CPU instead, to rehearse the tests' own code (inputs,
/// dtypes, comparisons) where no GPU is at hand: their checks then compare the CPU with itself.
pub fn cuda_for_test(test: &str) -> Option<Device> {
    if std::env::var("RDROP_CUDA_TESTS_ON_CPU").is_ok_and(|v| v == "1") {
        eprintln!("{test}: RDROP_CUDA_TESTS_ON_CPU=1, running on the CPU");
        return Some(Device::Cpu);
    }
    if let Some(why) = cuda_unavailable_reason() {
        if std::env::var("RDROP_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
            panic!("{test}: RDROP_REQUIRE_CUDA=1 but no usable GPU: {why}");
        }
        eprintln!("skipping {test}: {why}");
        return None;
    }
    // One device for the whole process: candle tells devices apart by the handle, not the GPU.
    static DEV: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    Some(
        DEV.get_or_init(|| parse_device("cuda:0").expect("GPU 0 opened a moment ago"))
            .clone(),
    )
}

fn open_cuda(spec: &str, ordinal: usize) -> Result<Device, DeviceError> {
    if !candle_core::utils::cuda_is_available() {
        return Err(DeviceError::NotCompiled {
            spec: spec.to_string(),
        });
    }
    let device = Device::new_cuda(ordinal).map_err(|source| classify(spec, ordinal, source))?;
    #[cfg(feature = "cuda")]
    keep_freed_memory(&device).map_err(|cause| DeviceError::Cuda {
        spec: spec.to_string(),
        ordinal,
        cause,
    })?;
    Ok(device)
}

/// candle allocates through cudarc from the device's default memory pool (`cuMemAllocAsync`),
/// whose release threshold is 0: at every synchronisation the driver takes back the memory freed
/// since, and the next training step maps it again. A threshold of `u64::MAX` keeps freed memory
/// in the pool for reuse, as PyTorch's caching allocator does.
#[cfg(feature = "cuda")]
fn keep_freed_memory(device: &Device) -> candle_core::Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::cuda_backend::WrapErr;
    let Device::Cuda(dev) = device else {
        return Ok(());
    };
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().w()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: `pool` receives the device's default pool, which lives as long as the context; the
    // attribute takes a pointer to a u64.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .w()?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()
        .w()?;
    }
    Ok(())
}

/// Sorts a failed `Device::new_cuda` by the driver's error name. candle wraps cudarc's
/// `DriverError`, whose `Debug` names the `CUresult` variant; the text is the one stable handle
/// that does not need the `cuda` feature to compile.
fn classify(spec: &str, ordinal: usize, source: candle_core::Error) -> DeviceError {
    let text = format!("{source} {source:?}");
    match driver_code(&text) {
        Some("CUDA_ERROR_STUB_LIBRARY") => DeviceError::StubDriver {
            spec: spec.to_string(),
        },
        Some(code @ ("CUDA_ERROR_NO_DEVICE" | "CUDA_ERROR_INVALID_DEVICE")) => DeviceError::NoGpu {
            spec: spec.to_string(),
            ordinal,
            code: code.to_string(),
        },
        _ => match source {
            candle_core::Error::NotCompiledWithCudaSupport => DeviceError::NotCompiled {
                spec: spec.to_string(),
            },
            cause => DeviceError::Cuda {
                spec: spec.to_string(),
                ordinal,
                cause,
            },
        },
    }
}

/// The first `CUDA_ERROR_*` name in `text`.
fn driver_code(text: &str) -> Option<&str> {
    let start = text.find("CUDA_ERROR_")?;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!(" CPU ".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:0".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        assert_eq!(DeviceSpec::Cpu.to_string(), "cpu");
    }

    #[test]
    fn rejects_other_names_and_says_what_is_accepted() {
        for bad in [
            "", "gpu", "cuda:", "cuda:-1", "cuda:+1", "cuda:x", "cuda0", "metal", "cpu:0",
        ] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(
                matches!(err, DeviceError::Unknown { .. }),
                "{bad:?} gave {err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{bad}`")), "{msg}");
            assert!(msg.contains("`cuda:N`"), "{msg}");
        }
        assert!(parse_device("tpu").is_err());
    }

    #[test]
    fn cpu_opens() {
        let dev = parse_device("cpu").unwrap();
        assert!(dev.is_cpu());
        assert_eq!(device_name(&dev), "cpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        for spec in ["cuda", "cuda:1"] {
            let err = parse_device(spec).unwrap_err();
            assert!(matches!(err, DeviceError::NotCompiled { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains("built without CUDA"), "{msg}");
            assert!(msg.contains("scripts/build-cuda.sh"), "{msg}");
        }
        assert!(!cuda_available());
        assert!(cuda_unavailable_reason()
            .unwrap()
            .contains("built without CUDA"));
    }

    /// With the feature, the outcome depends on the machine: a GPU opens; the stub or a missing GPU
    /// must come back as the specific error, never a panic or the catch-all.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_opens_or_explains_why_not() {
        match parse_device("cuda:0") {
            Ok(dev) => {
                assert!(dev.is_cuda());
                assert_eq!(device_name(&dev), "cuda:0");
                assert!(cuda_available());
            }
            Err(err) => {
                eprintln!("no usable GPU here: {err}");
                assert!(
                    matches!(
                        err,
                        DeviceError::StubDriver { .. } | DeviceError::NoGpu { .. }
                    ),
                    "unexpected: {err:?}"
                );
                assert!(!cuda_available());
            }
        }
        // No machine this runs on has 1000 GPUs; the stub answers before the index is checked.
        let err = parse_device("cuda:999").unwrap_err();
        assert!(
            matches!(
                err,
                DeviceError::StubDriver { .. } | DeviceError::NoGpu { .. }
            ),
            "unexpected: {err:?}"
        );
    }

    #[test]
    fn driver_errors_are_sorted_by_name() {
        // The text shape is cudarc's `Debug` for `DriverError`, as candle's `Display` shows it.
        let stub =
            "DriverError(CUDA_ERROR_STUB_LIBRARY, \"<Failure when calling cuGetErrorString()>\")";
        assert_eq!(driver_code(stub), Some("CUDA_ERROR_STUB_LIBRARY"));
        assert_eq!(
            driver_code("DriverError(CUDA_ERROR_NO_DEVICE, \"no CUDA-capable device\")"),
            Some("CUDA_ERROR_NO_DEVICE")
        );
        assert_eq!(driver_code("something else"), None);

        let e = classify("cuda", 0, candle_core::Error::Msg(stub.to_string()));
        assert!(matches!(e, DeviceError::StubDriver { .. }), "{e:?}");
        assert!(e.to_string().contains("CUDA_ERROR_STUB_LIBRARY"));
        let e = classify(
            "cuda:7",
            7,
            candle_core::Error::Msg("DriverError(CUDA_ERROR_INVALID_DEVICE, \"x\")".into()),
        );
        assert!(
            matches!(e, DeviceError::NoGpu { ordinal: 7, ref code, .. } if code == "CUDA_ERROR_INVALID_DEVICE"),
            "{e:?}"
        );
        let e = classify(
            "cuda",
            0,
            candle_core::Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"x\")".into()),
        );
        assert!(matches!(e, DeviceError::Cuda { .. }), "{e:?}");
        let e = classify("cuda", 0, candle_core::Error::NotCompiledWithCudaSupport);
        assert!(matches!(e, DeviceError::NotCompiled { .. }), "{e:?}");
    }
}
