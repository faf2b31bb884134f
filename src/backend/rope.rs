//! Rotary position embedding (`rotate_half` convention) in one pass on the CPU backends.
//!
//! burn's ops for `x cos + rotate_half(x) sin` are two slices, a negation, a concatenation
//! and three broadcasts, each a single-threaded walk over the projections' strided
//! `[b, heads, s, d]` views. Here each (batch, head) plane is one task writing a contiguous
//! result, which attention then reads in place. The op is linear in `x`, so under
//! `Autodiff<NdArray>` its backward is the transposed rotation:
//! `dx_i = dy_i cos_i + dy_{i+h} sin_{i+h}`, `dx_{i+h} = dy_{i+h} cos_{i+h} - dy_i sin_i`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops};
use burn::backend::NdArray;
use burn::tensor::{backend::Backend, Tensor};
use burn_ndarray::NdArrayTensor;
use ndarray::{s, Array4, ArrayView2, ArrayView4, Ix2, Ix4};

use super::autodiff_op::{cpu_inputs, f32_view_as, for_each_chunk, nd, record, wrap, CpuInputs};

/// Planes' elements in all below which the caller does every plane itself.
const PARALLEL_MIN: usize = 32768;

/// `x [b, h, s, d]` rotated by the tables `[s, d]`; `inverse` applies the transpose (the
/// backward of the forward rotation).
fn rotate(
    x: ArrayView4<f32>,
    cos: ArrayView2<f32>,
    sin: ArrayView2<f32>,
    inverse: bool,
) -> Array4<f32> {
    let (b, h, s, d) = x.dim();
    let half = d / 2;
    let mut out = Array4::<f32>::zeros((b, h, s, d));
    let plane = |bh: usize, o: &mut [f32]| {
        let xp = x.slice(s![bh / h, bh % h, .., ..]);
        for p in 0..s {
            let (xr, c, sn) = (xp.row(p), cos.row(p), sin.row(p));
            let or = &mut o[p * d..(p + 1) * d];
            for i in 0..half {
                let (a, z) = (xr[i], xr[i + half]);
                if inverse {
                    or[i] = a * c[i] + z * sn[i + half];
                    or[i + half] = z * c[i + half] - a * sn[i];
                } else {
                    or[i] = a * c[i] - z * sn[i];
                    or[i + half] = z * c[i + half] + a * sn[i + half];
                }
            }
        }
    };
    let os = out.as_slice_mut().expect("fresh array");
    for_each_chunk(os, s * d, PARALLEL_MIN, plane);
    out
}

fn forward(x: &NdArrayTensor, cos: &NdArrayTensor, sin: &NdArrayTensor) -> Option<NdArrayTensor> {
    let (xv, c, sn) = (
        f32_view_as::<Ix4>(x)?,
        f32_view_as::<Ix2>(cos)?,
        f32_view_as::<Ix2>(sin)?,
    );
    let (_, _, s, d) = xv.dim();
    let fits = d % 2 == 0 && c.dim() == (s, d) && sn.dim() == (s, d);
    fits.then(|| nd(rotate(xv, c, sn, false)))
}

#[derive(Debug)]
struct Rope;

impl Backward<NdArray, 1> for Rope {
    /// The tables.
    type State = (NdArrayTensor, NdArrayTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin) = ops.state;
        unary::<NdArray, _>(ops.parents, ops.node, grads, |dy| {
            let (c, sn) = (
                f32_view_as::<Ix2>(&cos).expect("[s, d]"),
                f32_view_as::<Ix2>(&sin).expect("[s, d]"),
            );
            nd(rotate(
                f32_view_as::<Ix4>(&dy).expect("[b, h, s, d]"),
                c,
                sn,
                true,
            ))
        });
    }
}

/// RoPE of `x: [batch, heads, seq, head_dim]` with tables `[seq, head_dim]` on the CPU
/// backends; `None` elsewhere (the caller uses burn's ops).
pub fn apply<B: Backend>(
    x: &Tensor<B, 4>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
) -> Option<Tensor<B, 4>> {
    match (cpu_inputs([x])?, cpu_inputs([cos, sin])?) {
        (CpuInputs::Plain([xp]), CpuInputs::Plain([c, s])) => wrap(forward(&xp, &c, &s)?),
        (CpuInputs::Tracked([xa]), CpuInputs::Tracked([c, s])) => {
            let y = forward(&xa.primitive, &c.primitive, &s.primitive)?;
            let state = || (c.primitive.clone(), s.primitive.clone());
            record(Rope, [&xa], state, y)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::autodiff_op::{test_values as values, Ad};
    use crate::model::rope::Rope as Tables;
    use burn::backend::ndarray::NdArrayDevice;
    use burn::tensor::TensorData;

    const DEV: NdArrayDevice = NdArrayDevice::Cpu;

    /// Values and the input gradient equal burn's ops (`rotate_half`) under autodiff, on the
    /// swapped view the projections produce, small and large enough to run in parallel; and
    /// inference gives the same values.
    #[test]
    fn matches_burns_ops() {
        for (b, h, s, d) in [(1, 3, 5, 8), (2, 9, 40, 64)] {
            let (cos, sin) = Tables::new(d, 10000.0, None).tables::<Ad>(7, s, &DEV);
            let (xv, rv) = (values(b * h * s * d, 1), values(b * h * s * d, 2));
            let reference = |x: Tensor<Ad, 4>| {
                let x1 = x.clone().narrow(3, 0, d / 2);
                let x2 = x.clone().narrow(3, d / 2, d / 2);
                let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
                x * cos.clone().unsqueeze::<4>() + rotated * sin.clone().unsqueeze::<4>()
            };
            let run = |fused: bool| {
                let x = Tensor::<Ad, 4>::from_data(TensorData::new(xv.clone(), [b, s, h, d]), &DEV)
                    .require_grad();
                let xs = x.clone().swap_dims(1, 2);
                let y = if fused {
                    apply(&xs, &cos, &sin).expect("Autodiff<NdArray> takes the op")
                } else {
                    reference(xs)
                };
                let r = Tensor::<Ad, 4>::from_data(TensorData::new(rv.clone(), [b, h, s, d]), &DEV);
                let grads = (y.clone() * r).sum().backward();
                let v = |t: TensorData| t.into_vec::<f32>().unwrap();
                (v(y.into_data()), v(x.grad(&grads).unwrap().into_data()))
            };
            let (a, r) = (run(true), run(false));
            for (what, x, y) in [("y", &a.0, &r.0), ("dx", &a.1, &r.1)] {
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    assert!(
                        (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                        "{what}[{i}]: {p} vs {q}"
                    );
                }
            }
            let (ci, si) = Tables::new(d, 10000.0, None).tables::<NdArray>(7, s, &DEV);
            let xi =
                Tensor::<NdArray, 4>::from_data(TensorData::new(xv.clone(), [b, s, h, d]), &DEV)
                    .swap_dims(1, 2);
            let inf = apply(&xi, &ci, &si).expect("ndarray takes the op");
            assert_eq!(inf.into_data().into_vec::<f32>().unwrap(), a.0);
        }
    }
}
