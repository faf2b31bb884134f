//! `x W` with a frozen `W` on the CPU autodiff backend (`Autodiff<NdArray>`), as one autodiff
//! op: the forward and the input gradient `dY W^T` both run on the in-place CPU GEMM of
//! [`super::cpu_matmul`], and no weight gradient is computed.
//!
//! Mask-only training never updates weights, yet burn's autodiff matmul goes through
//! burn-ndarray's matmul, which copies both operands (the weight too) for the forward and
//! again for the transposed weight in the backward. Here the weight is read in place both
//! ways (`W^T` is a strided view). Other backends, and weights that require a gradient, take
//! burn's own path.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops};
use burn::backend::NdArray;
use burn::tensor::{backend::Backend, Tensor};
use burn_ndarray::NdArrayTensor;
use ndarray::Ix2;

use super::autodiff_op::{cpu_inputs, CpuInputs};
use super::cpu_matmul::product;

#[derive(Debug)]
struct FrozenMatmul;

impl Backward<NdArray, 1> for FrozenMatmul {
    /// The weight `[k, n]`: an `Arc` of the stored array, not a copy.
    type State = NdArrayTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let w = ops.state;
        unary::<NdArray, _>(ops.parents, ops.node, grads, |grad| {
            // dX = dY W^T; the transpose is a view of the stored weight.
            let (NdArrayTensor::F32(g), NdArrayTensor::F32(w)) = (&grad, &w) else {
                unreachable!("the frozen matmul only records f32 operands")
            };
            let (g, w) = (g.view(), w.view());
            let g = g.into_dimensionality::<Ix2>().expect("2-D gradient");
            let w = w.into_dimensionality::<Ix2>().expect("2-D weight");
            NdArrayTensor::from(product(g, w.t()).into_shared().into_dyn())
        });
    }
}

/// `x [m, k] · w [k, n]` as a frozen-weight op when both are `Autodiff<NdArray>` f32 tensors and
/// `w` takes no gradient; `None` otherwise (the caller takes burn's matmul).
pub fn matmul<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let CpuInputs::Tracked([xp, wp]) = cpu_inputs([x, w])? else {
        return None;
    };
    if wp.node.clone_if_require_grad().is_some() {
        // A weight that trains needs its own gradient: burn's matmul computes it.
        return None;
    }
    let (NdArrayTensor::F32(xs), NdArrayTensor::F32(ws)) = (&xp.primitive, &wp.primitive) else {
        return None;
    };
    let xv = xs.view().into_dimensionality::<Ix2>().ok()?;
    let wv = ws.view().into_dimensionality::<Ix2>().ok()?;
    if xv.dim().1 != wv.dim().0 {
        return None;
    }
    let y = NdArrayTensor::from(product(xv, wv).into_shared().into_dyn());
    super::autodiff_op::record(FrozenMatmul, [&xp], || wp.primitive.clone(), y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::autodiff_op::Ad;
    use burn::backend::ndarray::NdArrayDevice;
    use burn::tensor::TensorData;

    const DEV: NdArrayDevice = NdArrayDevice::Cpu;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 37 + seed * 11) % 101) as f32 - 50.0) / 40.0)
            .collect()
    }

    fn tensor(v: &[f32], shape: [usize; 2]) -> Tensor<Ad, 2> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &DEV)
    }

    /// `sum((x W) * r)` and its gradient with respect to `x`, through `product`.
    fn loss_and_grad(
        xv: &[f32],
        wv: &[f32],
        rv: &[f32],
        (m, k, n): (usize, usize, usize),
        frozen: bool,
    ) -> (f32, Vec<f32>) {
        let x = tensor(xv, [m, k]).require_grad();
        let w = tensor(wv, [k, n]);
        let y = if frozen {
            matmul(&x, &w).expect("Autodiff<NdArray> f32 takes the frozen path")
        } else {
            x.clone().matmul(w)
        };
        let loss = (y * tensor(rv, [m, n])).sum();
        let lv = loss.clone().into_scalar();
        let g = x.grad(&loss.backward()).expect("x has a gradient");
        (lv, g.into_data().into_vec::<f32>().unwrap())
    }

    /// The value and the input gradient equal burn's own matmul, for row counts on both sides
    /// of the streaming/GEMM switch.
    #[test]
    fn matches_burns_matmul() {
        for dims @ (m, k, n) in [(3, 5, 7), (16, 33, 40), (130, 64, 70)] {
            let (xv, wv, rv) = (values(m * k, 1), values(k * n, 2), values(m * n, 3));
            let (l1, g1) = loss_and_grad(&xv, &wv, &rv, dims, true);
            let (l2, g2) = loss_and_grad(&xv, &wv, &rv, dims, false);
            assert!(
                (l1 - l2).abs() <= 1e-4 * (1.0 + l2.abs()),
                "{dims:?}: {l1} vs {l2}"
            );
            for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{dims:?}[{i}]: {a} vs {b}"
                );
            }
        }
    }

    /// The input gradient against central finite differences of the loss computed in f64.
    #[test]
    fn matches_finite_differences() {
        let (m, k, n) = (20, 6, 9);
        let (xv, wv, rv) = (values(m * k, 4), values(k * n, 5), values(m * n, 6));
        let (_, g) = loss_and_grad(&xv, &wv, &rv, (m, k, n), true);
        let loss = |x: &[f64]| -> f64 {
            let mut s = 0.0;
            for r in 0..m {
                for c in 0..n {
                    let y: f64 = (0..k).map(|j| x[r * k + j] * wv[j * n + c] as f64).sum();
                    s += y * rv[r * n + c] as f64;
                }
            }
            s
        };
        let x64: Vec<f64> = xv.iter().map(|&v| v as f64).collect();
        let h = 1e-3;
        for i in 0..m * k {
            let (mut up, mut down) = (x64.clone(), x64.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (loss(&up) - loss(&down)) / (2.0 * h);
            assert!(
                (g[i] as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()),
                "[{i}]: {} vs {fd}",
                g[i]
            );
        }
    }

    /// A weight that trains, and other backends, keep burn's matmul (and its weight gradient).
    #[test]
    fn falls_back_when_the_weight_trains() {
        let x = tensor(&values(6, 1), [2, 3]);
        let w = tensor(&values(12, 2), [3, 4]).require_grad();
        assert!(matmul(&x, &w).is_none());
        let xi = Tensor::<NdArray, 2>::ones([2, 3], &DEV);
        let wi = Tensor::<NdArray, 2>::ones([3, 4], &DEV);
        assert!(matmul(&xi, &wi).is_none());
    }

    /// With no tracked input the op records nothing and still computes `x W`.
    #[test]
    fn untracked_inputs_give_the_product() {
        let (xv, wv) = (values(40 * 8, 7), values(8 * 5, 8));
        let y = matmul(&tensor(&xv, [40, 8]), &tensor(&wv, [8, 5])).unwrap();
        let got = y.into_data().into_vec::<f32>().unwrap();
        for r in 0..40 {
            for c in 0..5 {
                let want: f32 = (0..8).map(|j| xv[r * 8 + j] * wv[j * 5 + c]).sum();
                assert!((got[r * 5 + c] - want).abs() < 1e-4, "[{r},{c}]");
            }
        }
    }
}
