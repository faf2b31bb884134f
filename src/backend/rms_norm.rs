//! RMSNorm, `x / sqrt(mean(x^2) + eps) * w` over the last dimension, in one pass per row on
//! the CPU backends.
//!
//! burn-ndarray runs the five ops of the definition one after another, single-threaded, each
//! over arrays of dynamic rank (its broadcasts walk them element by element), and under
//! autodiff each records a backward with fresh arrays. Here rows go in parallel chunks and, under
//! `Autodiff<NdArray>`, the op's backward is the closed form: with `r = 1 / sqrt(mean(x^2) +
//! eps)`, `x^ = x r` and `g = dy w`, `dx = r (g - x^ mean(g x^))` and `dw = sum_rows dy x^`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, Backward, Ops};
use burn::backend::NdArray;
use burn::tensor::{backend::Backend, Tensor};
use burn_ndarray::NdArrayTensor;
use ndarray::{ArrayD, ArrayViewD, Axis};

use super::autodiff_op::{cpu_inputs, f32_view, for_each_chunk, nd, record, wrap, CpuInputs};

/// Elements per parallel task; fewer in all run on the caller.
const CHUNK: usize = 16384;

/// `f(row, x_row, out_row)` for each row of `x` (made contiguous) into a fresh array of its
/// shape.
fn per_row(x: &ArrayViewD<f32>, f: impl Fn(usize, &[f32], &mut [f32]) + Sync) -> ArrayD<f32> {
    let n = x.shape().last().copied().unwrap_or(1).max(1);
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let mut out = vec![0f32; xs.len()];
    let rows_per = (CHUNK / n).max(1);
    for_each_chunk(&mut out, rows_per * n, CHUNK + 1, |c, o| {
        let x0 = c * rows_per;
        for (r, (or, xr)) in o.chunks_mut(n).zip(xs[x0 * n..].chunks(n)).enumerate() {
            f(x0 + r, xr, or);
        }
    });
    ArrayD::from_shape_vec(x.raw_dim(), out).expect("same shape")
}

/// `1 / sqrt(mean(x^2) + eps)` of one row, summed in f64 (the row is at most a few thousand
/// values; burn's f32 mean agrees to float reassociation).
fn inv_rms(x: &[f32], eps: f64) -> f32 {
    let ms = x.iter().map(|&v| (v * v) as f64).sum::<f64>() / x.len() as f64;
    (1.0 / (ms + eps).sqrt()) as f32
}

fn forward(x: &ArrayViewD<f32>, w: &[f32], eps: f64) -> ArrayD<f32> {
    per_row(x, |_, xr, out| {
        let r = inv_rms(xr, eps);
        for ((o, &v), &g) in out.iter_mut().zip(xr).zip(w) {
            *o = v * r * g;
        }
    })
}

#[derive(Debug)]
struct RmsNorm;

impl Backward<NdArray, 2> for RmsNorm {
    /// `x`, `w` (shared, not copied) and `eps`.
    type State = (NdArrayTensor, NdArrayTensor, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w, eps) = ops.state;
        let (xv, wv) = (f32_view(&x).expect("f32"), f32_view(&w).expect("f32"));
        let w = wv.as_standard_layout().to_owned();
        let w = w.as_slice().expect("standard layout");
        let rows_of = |a: &ArrayViewD<f32>| a.as_standard_layout().into_owned();
        binary::<NdArray, _, _>(
            ops.parents,
            ops.node,
            grads,
            |dy| {
                let dy = rows_of(&f32_view(&dy).expect("f32 gradient"));
                let n = w.len();
                let dys = dy.as_slice().expect("standard layout");
                nd(per_row(&xv, |row, xr, out| {
                    let dyr = &dys[row * n..(row + 1) * n];
                    let r = inv_rms(xr, eps);
                    let dot: f64 = (0..n)
                        .map(|i| (dyr[i] * w[i] * xr[i] * r) as f64)
                        .sum::<f64>()
                        / n as f64;
                    for i in 0..n {
                        out[i] = r * (dyr[i] * w[i] - xr[i] * r * dot as f32);
                    }
                }))
            },
            |dy| {
                let dy = rows_of(&f32_view(&dy).expect("f32 gradient"));
                let xs = rows_of(&xv);
                let n = w.len();
                let (dy2, x2) = (
                    dy.to_shape((dy.len() / n, n)).expect("rows"),
                    xs.to_shape((xs.len() / n, n)).expect("rows"),
                );
                let mut dw = ndarray::Array1::<f32>::zeros(n);
                for (dyr, xr) in dy2.axis_iter(Axis(0)).zip(x2.axis_iter(Axis(0))) {
                    let r = inv_rms(xr.as_slice().expect("contiguous row"), eps);
                    dw.zip_mut_with(&(&dyr * &xr), |a, b| *a += b * r);
                }
                nd(dw)
            },
        );
    }
}

/// RMSNorm of `x` over its last dimension with weight `w`: one parallel pass on the ndarray
/// backend, one op with a closed-form backward on `Autodiff<NdArray>`; `None` elsewhere (the
/// caller, `model::layers::rms_norm`, uses burn's ops).
pub fn rms_norm<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    w: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, D>> {
    if x.dims()[D - 1] != w.dims()[0] {
        return None;
    }
    let fwd = |x: &NdArrayTensor, w: &NdArrayTensor| -> Option<NdArrayTensor> {
        let (x, w) = (f32_view(x)?, f32_view(w)?);
        let w = w.as_standard_layout();
        Some(nd(forward(&x, w.as_slice()?, eps)))
    };
    match (cpu_inputs([x])?, cpu_inputs([w])?) {
        (CpuInputs::Plain([xp]), CpuInputs::Plain([wp])) => wrap(fwd(&xp, &wp)?),
        (CpuInputs::Tracked([xa]), CpuInputs::Tracked([wa])) => {
            let y = fwd(&xa.primitive, &wa.primitive)?;
            let state = || (xa.primitive.clone(), wa.primitive.clone(), eps);
            record(RmsNorm, [&xa, &wa], state, y)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::autodiff_op::{test_values as values, Ad};
    use burn::backend::ndarray::NdArrayDevice;
    use burn::tensor::TensorData;

    const DEV: NdArrayDevice = NdArrayDevice::Cpu;

    /// Value and the gradients of `x` and `w` equal burn's ops under autodiff and `dx` the f64
    /// definition's central differences, on a strided input with enough rows to take the
    /// parallel path; inference gives the same values.
    #[test]
    fn matches_burns_ops() {
        let (rows, n) = (300, 70);
        let (xv, wv, rv) = (values(rows * n, 1), values(n, 2), values(rows * n, 3));
        let reference = |x: Tensor<Ad, 3>, w: &Tensor<Ad, 1>| {
            let var = (x.clone() * x.clone()).mean_dim(2);
            x / (var + 1e-5).sqrt() * w.clone().unsqueeze::<3>()
        };
        let run = |fused: bool| {
            let x = Tensor::<Ad, 3>::from_data(TensorData::new(xv.clone(), [n, 3, 100]), &DEV)
                .require_grad();
            let w =
                Tensor::<Ad, 1>::from_data(TensorData::new(wv.clone(), [n]), &DEV).require_grad();
            // [n, 3, 100] -> [3, 100, n]: rows strided in memory.
            let xt = x.clone().permute([1, 2, 0]);
            let y = if fused {
                rms_norm(&xt, &w, 1e-5).expect("Autodiff<NdArray> takes the fused op")
            } else {
                reference(xt, &w)
            };
            let r = Tensor::<Ad, 3>::from_data(TensorData::new(rv.clone(), [3, 100, n]), &DEV);
            let grads = (y.clone() * r).sum().backward();
            let v = |d: TensorData| d.into_vec::<f32>().unwrap();
            (
                v(y.into_data()),
                v(x.grad(&grads).unwrap().into_data()),
                v(w.grad(&grads).unwrap().into_data()),
            )
        };
        let (a, b) = (run(true), run(false));
        // burn's f32 autodiff of the five ops is itself off by up to ~3e-4 here.
        for (what, x, y) in [("y", &a.0, &b.0), ("dx", &a.1, &b.1), ("dw", &a.2, &b.2)] {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert!(
                    (p - q).abs() <= 5e-4 * (1.0 + q.abs()),
                    "{what}[{i}]: {p} vs {q}"
                );
            }
        }
        // dx against central differences of the f64 definition: x[c, i, j] sits at position c
        // of row (i, j) of the permuted input, weighted by r[i, j, :].
        let row_loss = |i: usize, j: usize, c: usize, h: f64| {
            let xr: Vec<f64> = (0..n)
                .map(|k| xv[k * 300 + i * 100 + j] as f64 + if k == c { h } else { 0.0 })
                .collect();
            let ms = xr.iter().map(|v| v * v).sum::<f64>() / n as f64;
            let inv = 1.0 / (ms + 1e-5).sqrt();
            (0..n)
                .map(|k| xr[k] * inv * wv[k] as f64 * rv[(i * 100 + j) * n + k] as f64)
                .sum::<f64>()
        };
        for idx in (0..rows * n).step_by(97) {
            let (c, i, j) = (idx / 300, (idx / 100) % 3, idx % 100);
            let want = (row_loss(i, j, c, 1e-4) - row_loss(i, j, c, -1e-4)) / 2e-4;
            let got = a.1[idx] as f64;
            assert!(
                (got - want).abs() <= 2e-5 * (1.0 + want.abs()),
                "dx[{idx}]: {got} vs {want}"
            );
        }
        let xi = Tensor::<NdArray, 3>::from_data(TensorData::new(xv.clone(), [n, 3, 100]), &DEV)
            .permute([1, 2, 0]);
        let wi = Tensor::<NdArray, 1>::from_data(TensorData::new(wv.clone(), [n]), &DEV);
        let inf = rms_norm(&xi, &wi, 1e-5)
            .expect("ndarray takes the op")
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        for (p, q) in inf.iter().zip(&b.0) {
            assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{p} vs {q}");
        }
    }
}
