//! Dispatch macros: `float_dispatch!` runs a kernel body for an input's float type, and
//! `simd_dispatch!` compiles a hot loop for AVX-512, AVX2 and the baseline, picking at run time.

/// Evaluates `$body` with the type `$t` set to the float type of the CPU storage `$storage`
/// (f32 or f64) and wraps the `Vec<$t>` it gives in a `CpuStorage` of that type. Any other dtype
/// makes the enclosing function return [`Error::DType`](crate::Error::DType) for `$op`.
#[macro_export]
macro_rules! float_dispatch {
    ($op:expr, $storage:expr, |$t:ident| $body:expr) => {
        match $storage {
            $crate::__candle::CpuStorage::F32(_) => {
                type $t = f32;
                $crate::__candle::CpuStorage::F32($body)
            }
            $crate::__candle::CpuStorage::F64(_) => {
                type $t = f64;
                $crate::__candle::CpuStorage::F64($body)
            }
            other => {
                let dtype = $crate::__candle::backend::BackendStorage::dtype(other);
                return Err($crate::Error::DType { op: $op, dtype }.into());
            }
        }
    };
}

/// Defines `fn $name(args) -> R` that runs `$imp` compiled for the widest vector instructions this
/// CPU has (AVX-512, AVX2, else the build's baseline). `$imp` and what its hot loops call must be
/// `#[inline(always)]` (closures are not inlined into the wide copies). Loops written with
/// independent lanes (an array of partial sums, say) then use the wide registers; the results are
/// the same on every path, since only the register width changes, not the order of operations.
#[macro_export]
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident => $imp:path, ($($a:ident : $t:ty),* $(,)?) -> $r:ty) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($a: $t),*) -> $r {
                    $imp($($a),*)
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($a: $t),*) -> $r {
                    $imp($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has just been found to support the instructions.
                    return unsafe { avx512($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above.
                    return unsafe { avx2($($a),*) };
                }
            }
            $imp($($a),*)
        }
    };
}
