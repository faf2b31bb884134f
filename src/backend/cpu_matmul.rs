//! `x W` for the CPU (ndarray) backend, on its arrays in place.
//!
//! burn-ndarray 0.21 copies both operands of every matmul (its reshape always makes an owned
//! copy), so decoding one token copied every weight matrix and then packed it again for the
//! GEMM kernel: ~3 tokens/s on a 135M model. Here a product with few rows streams each weight
//! row once (a matrix-vector product: narrow matrices split by slabs of rows, wide ones by
//! blocks of columns, across threads), and a larger one calls the `gemm` crate on views of the
//! stored arrays. The autodiff backend reaches this through `frozen_linear`; other backends
//! take burn's own matmul.

use std::any::Any;

use super::autodiff_op::{cpu_inputs, wrap, CpuInputs};
use super::spin_pool;
use burn::tensor::{backend::Backend, Tensor};
use burn_ndarray::NdArrayTensor;
use ndarray::{ArrayView2, Ix2};

/// Up to this many rows, the streaming matrix-vector path (each row of W read once for all of
/// them); above, GEMM.
const STREAM_ROWS: usize = 16;
/// Output columns per task and block: small enough that the rows' accumulators stay in L1.
const COL_BLOCK: usize = 512;

/// `x [m, k] · w [k, n]` when both live on the ndarray backend as f32; `None` otherwise (the
/// caller falls back to burn's matmul).
pub fn matmul<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let CpuInputs::Plain([xp, wp]) = cpu_inputs([x, w])? else {
        return None;
    };
    let (NdArrayTensor::F32(xs), NdArrayTensor::F32(ws)) = (&xp, &wp) else {
        return None;
    };
    let xv = xs.view().into_dimensionality::<Ix2>().ok()?;
    let wv = ws.view().into_dimensionality::<Ix2>().ok()?;
    if xv.dim().1 != wv.dim().0 {
        return None;
    }
    wrap(NdArrayTensor::from(
        product(xv, wv).into_shared().into_dyn(),
    ))
}

pub(crate) fn cast<T: Any, U: Any>(v: T) -> Option<U> {
    (Box::new(v) as Box<dyn Any>)
        .downcast::<U>()
        .ok()
        .map(|b| *b)
}

/// `x [m, k] · w [k, n]` for any strides of either (the autodiff backward passes `W^T` as a
/// view). `k` must match.
pub(crate) fn product(x: ArrayView2<f32>, w: ArrayView2<f32>) -> ndarray::Array2<f32> {
    let ((m, k), (_, n)) = (x.dim(), w.dim());
    if m > STREAM_ROWS || !w.is_standard_layout() {
        return gemm(x, w);
    }
    let xs = x.as_standard_layout();
    let (xs, ws) = (
        xs.as_slice().expect("standard layout"),
        w.as_slice().expect("standard layout"),
    );
    let st = Stream { xs, ws, m, k, n };
    let threads = rayon::current_num_threads().max(1);
    let out = if m * n <= SPLIT_K_MAX_OUT && k >= 2 * MIN_K_SLAB {
        // Slabs of whole rows of W in parallel (each thread reads contiguous memory), the
        // partial products summed after. Splitting 192 or 576 columns into column blocks left
        // one thread streaming most of the matrix.
        let slab = k.div_ceil(2 * threads).max(MIN_K_SLAB);
        let parts = spin_pool::map(k.div_ceil(slab), |i| {
            st.block(i * slab..((i + 1) * slab).min(k), 0..n)
        });
        let mut parts = parts.into_iter();
        let mut out = parts.next().unwrap_or_else(|| vec![0f32; m * n]);
        for p in parts {
            out.iter_mut().zip(&p).for_each(|(o, v)| *o += v);
        }
        out
    } else {
        // Outputs too large to keep one per thread in cache: blocks of output columns in
        // parallel, each task writing its own columns of every output row.
        let mut out = vec![0f32; m * n];
        let blocks = spin_pool::map(n.div_ceil(COL_BLOCK), |i| {
            let c0 = i * COL_BLOCK;
            (c0, st.block(0..k, c0..(c0 + COL_BLOCK).min(n)))
        });
        for (c0, acc) in blocks {
            let bw = acc.len() / m;
            for r in 0..m {
                out[r * n + c0..r * n + c0 + bw].copy_from_slice(&acc[r * bw..(r + 1) * bw]);
            }
        }
        out
    };
    ndarray::Array2::from_shape_vec((m, n), out).expect("m x n values")
}

/// Up to this many outputs (`m x n`, 256 KiB: a core's L2) the streaming product splits the
/// rows of W among threads, each summing into a whole output of its own.
const SPLIT_K_MAX_OUT: usize = 65536;
/// The fewest rows of W per thread's slab.
const MIN_K_SLAB: usize = 32;

/// The operands of a streaming product: `x [m, k]` and `w [k, n]`, both row-major.
#[derive(Clone, Copy)]
struct Stream<'a> {
    xs: &'a [f32],
    ws: &'a [f32],
    m: usize,
    k: usize,
    n: usize,
}

type Span = std::ops::Range<usize>;

impl Stream<'_> {
    /// `x[:, ks] · w[ks, cs]` as `[m, |cs|]` row-major. With AVX2 and FMA (checked at run time)
    /// the loop compiles to 256-bit vectors; the build itself targets baseline x86-64.
    fn block(self, ks: Span, cs: Span) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features `block_avx2` is compiled for.
            return unsafe { self.block_avx2(ks, cs) };
        }
        self.block_any(ks, cs)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2(self, ks: Span, cs: Span) -> Vec<f32> {
        self.block_any(ks, cs)
    }

    /// Four rows of W per pass over the accumulators, so they are loaded and stored a quarter
    /// as often as the weights stream by.
    #[inline(always)]
    fn block_any(self, ks: Span, cs: Span) -> Vec<f32> {
        let Self { xs, ws, m, k, n } = self;
        let bw = cs.len();
        let mut acc = vec![0f32; m * bw];
        let row = |kk: usize| &ws[kk * n + cs.start..kk * n + cs.end];
        let mut kk = ks.start;
        while kk + 4 <= ks.end {
            let (w0, w1, w2, w3) = (row(kk), row(kk + 1), row(kk + 2), row(kk + 3));
            for r in 0..m {
                let a = &xs[r * k + kk..r * k + kk + 4];
                let y = acc[r * bw..(r + 1) * bw].iter_mut();
                for ((((y, p), q), s), t) in y.zip(w0).zip(w1).zip(w2).zip(w3) {
                    *y += a[0] * p + a[1] * q + a[2] * s + a[3] * t;
                }
            }
            kk += 4;
        }
        for kk in kk..ks.end {
            let w0 = row(kk);
            for r in 0..m {
                let a = xs[r * k + kk];
                for (y, &v) in acc[r * bw..(r + 1) * bw].iter_mut().zip(w0) {
                    *y += a * v;
                }
            }
        }
        acc
    }
}

/// `x w` by the `gemm` crate (runtime-dispatched AVX2/AVX-512/NEON kernels, threads on rayon's
/// pool), on the views' own strides: `W^T` needs no copy. On this project's 2-core AVX2 CI
/// machine it runs at ~97 % of the FMA peak where matrixmultiply reached 70-95 %
/// (`ddp-run bench --train` shows the step; see docs/ARCHITECTURE.md).
fn gemm(x: ArrayView2<f32>, w: ArrayView2<f32>) -> ndarray::Array2<f32> {
    gemm_on(x, w, gemm::Parallelism::Rayon(rayon::current_num_threads()))
}

/// [`gemm`] with the caller's choice of threads (`Parallelism::None` inside a parallel loop).
pub(crate) fn gemm_on(
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    threads: gemm::Parallelism,
) -> ndarray::Array2<f32> {
    let ((m, k), (_, n)) = (x.dim(), w.dim());
    let mut out = ndarray::Array2::<f32>::zeros((m, n));
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    let (xs, ws) = (x.strides(), w.strides());
    // SAFETY: the pointers and strides are those of live views of the stated shapes, and `out`
    // is an owned standard-layout [m, n] array that nothing else aliases.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            xs[1],
            xs[0],
            w.as_ptr(),
            ws[1],
            ws[0],
            0.0,
            1.0,
            false,
            false,
            false,
            threads,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::ndarray::NdArrayDevice;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    type B = NdArray;

    fn t(v: Vec<f32>, shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(v, shape), &NdArrayDevice::Cpu)
    }

    /// Both paths (streaming by row slabs or column blocks, and GEMM), with widths that are not
    /// multiples of the column block and depths not multiples of 4, against an f64 triple loop.
    #[test]
    fn matches_a_plain_product() {
        for (m, k, n) in [
            (1, 7, 5),
            (3, 64, 1100),
            (16, 33, 513),
            (17, 40, 70),
            (2, 130, 96),
            (1, 9, 5000),
            (2, 70, 40000),
        ] {
            let xv: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let wv: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
                .collect();
            let got = matmul(&t(xv.clone(), [m, k]), &t(wv.clone(), [k, n]))
                .expect("ndarray f32 takes this path")
                .into_data()
                .into_vec::<f32>()
                .unwrap();
            for r in 0..m {
                for c in 0..n {
                    let want: f64 = (0..k)
                        .map(|j| xv[r * k + j] as f64 * wv[j * n + c] as f64)
                        .sum();
                    let d = (got[r * n + c] as f64 - want).abs();
                    assert!(d < 1e-4 * (1.0 + want.abs()), "{m}x{k}x{n} [{r},{c}]: {d}");
                }
            }
        }
    }

    #[test]
    fn other_backends_fall_back() {
        type A = burn::backend::Autodiff<NdArray>;
        let x = Tensor::<A, 2>::ones([2, 3], &NdArrayDevice::Cpu);
        let w = Tensor::<A, 2>::ones([3, 4], &NdArrayDevice::Cpu);
        assert!(matmul(&x, &w).is_none());
    }
}
