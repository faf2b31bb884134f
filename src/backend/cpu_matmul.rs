//! `x W` for the CPU (ndarray) backend, on its arrays in place.
//!
//! burn-ndarray 0.21 copies both operands of every matmul (its reshape always makes an owned
//! copy), so decoding one token copied every weight matrix and then packed it again for the
//! GEMM kernel: ~3 tokens/s on a 135M model. Here a product with few rows streams each weight
//! row once (a matrix-vector product, output columns split across threads), and a larger one
//! calls ndarray's GEMM on views of the stored arrays. Other backends, and the autodiff
//! backend used in training, take burn's own matmul.

use std::any::{Any, TypeId};

use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};
use burn_ndarray::NdArrayTensor;
use ndarray::{ArrayView2, Ix2};
use rayon::prelude::*;

/// Up to this many rows, the streaming matrix-vector path (each row of W read once for all of
/// them); above, GEMM.
const STREAM_ROWS: usize = 16;
/// Output columns per task and block: small enough that the rows' accumulators stay in L1.
const COL_BLOCK: usize = 512;

/// `x [m, k] · w [k, n]` when both live on the ndarray backend as f32; `None` otherwise (the
/// caller falls back to burn's matmul).
pub fn matmul<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    if TypeId::of::<B::FloatTensorPrimitive>() != TypeId::of::<NdArrayTensor>() {
        return None;
    }
    let (TensorPrimitive::Float(xp), TensorPrimitive::Float(wp)) =
        (x.clone().into_primitive(), w.clone().into_primitive())
    else {
        return None;
    };
    let xp = cast::<_, NdArrayTensor>(xp)?;
    let wp = cast::<_, NdArrayTensor>(wp)?;
    let (NdArrayTensor::F32(xs), NdArrayTensor::F32(ws)) = (&xp, &wp) else {
        return None;
    };
    let (xv, wv) = (xs.view(), ws.view());
    let xv = xv.into_dimensionality::<Ix2>().ok()?;
    let wv = wv.into_dimensionality::<Ix2>().ok()?;
    let out = product(xv, wv)?;
    let out = NdArrayTensor::from(out.into_shared().into_dyn());
    Some(Tensor::from_primitive(TensorPrimitive::Float(cast(out)?)))
}

fn cast<T: Any, U: Any>(v: T) -> Option<U> {
    (Box::new(v) as Box<dyn Any>)
        .downcast::<U>()
        .ok()
        .map(|b| *b)
}

fn product(x: ArrayView2<f32>, w: ArrayView2<f32>) -> Option<ndarray::Array2<f32>> {
    let ((m, k), (k2, n)) = (x.dim(), w.dim());
    if k != k2 {
        return None;
    }
    if m > STREAM_ROWS {
        // Row blocks in parallel on rayon's pool, one GEMM each (the binary runs matrixmultiply
        // single-threaded, so the two pools do not fight over the cores).
        let mut out = ndarray::Array2::<f32>::zeros((m, n));
        let per = m
            .div_ceil(rayon::current_num_threads().max(1))
            .max(STREAM_ROWS);
        out.axis_chunks_iter_mut(ndarray::Axis(0), per)
            .into_par_iter()
            .enumerate()
            .for_each(|(i, mut o)| {
                let rows = x.slice(ndarray::s![i * per..i * per + o.nrows(), ..]);
                ndarray::linalg::general_mat_mul(1.0, &rows, &w, 0.0, &mut o);
            });
        return Some(out);
    }
    let (xs, ws) = (x.as_standard_layout(), w.as_standard_layout());
    let (xs, ws) = (xs.as_slice()?, ws.as_slice()?);
    let mut out = vec![0f32; m * n];
    // Blocks of output columns in parallel; within a block, every row of W once, for all rows
    // of x. Each task writes its own columns of every output row.
    let blocks: Vec<(usize, Vec<f32>)> = (0..n)
        .step_by(COL_BLOCK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|c0| {
            let c1 = (c0 + COL_BLOCK).min(n);
            let bw = c1 - c0;
            let mut acc = vec![0f32; m * bw];
            for kk in 0..k {
                let wrow = &ws[kk * n + c0..kk * n + c1];
                for r in 0..m {
                    let a = xs[r * k + kk];
                    for (y, &wv) in acc[r * bw..(r + 1) * bw].iter_mut().zip(wrow) {
                        *y += a * wv;
                    }
                }
            }
            (c0, acc)
        })
        .collect();
    for (c0, acc) in blocks {
        let bw = acc.len() / m;
        for r in 0..m {
            out[r * n + c0..r * n + c0 + bw].copy_from_slice(&acc[r * bw..(r + 1) * bw]);
        }
    }
    ndarray::Array2::from_shape_vec((m, n), out).ok()
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

    /// Both paths (streaming and GEMM), with widths that are not multiples of the column block,
    /// against an f64 triple loop.
    #[test]
    fn matches_a_plain_product() {
        for (m, k, n) in [(1, 7, 5), (3, 64, 1100), (16, 33, 513), (17, 40, 70)] {
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
