//! A loss computed on the host entering `Autodiff<NdArray>`'s graph as one op: its value, and
//! its gradient with respect to the logits handed over as an array.
//!
//! `prune::distill` computes the distillation loss and its closed-form gradient row by row.
//! The generic way in, `sum(logits * G) - sum(logits * G).detach() + loss`, costs a
//! vocabulary-sized product and sum in the forward and a broadcast product in the backward,
//! each a single-threaded pass over `[batch, seq, vocab]` (25M values at batch 4); here the
//! backward hands `G` (scaled by the incoming scalar) to the logits directly.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops};
use burn::backend::NdArray;
use burn::tensor::{backend::Backend, Tensor};
use ndarray::{ArrayD, IxDyn};

use super::autodiff_op::{cpu_inputs, f32_view, nd, record, CpuInputs};

#[derive(Debug)]
struct HostTerm;

impl Backward<NdArray, 1> for HostTerm {
    /// `d loss / d logits`, in the logits' shape.
    type State = ArrayD<f32>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut g = ops.state;
        unary::<NdArray, _>(ops.parents, ops.node, grads, |dy| {
            let s = f32_view(&dy)
                .and_then(|v| v.iter().next().copied())
                .unwrap_or(1.0);
            if s != 1.0 {
                g.par_mapv_inplace(|x| x * s);
            }
            nd(g)
        });
    }
}

/// A scalar tensor of value `value` whose gradient with respect to `logits` is `grad` (row-major,
/// `logits`' shape), on `Autodiff<NdArray>`; elsewhere `Err(grad)` hands the gradient back for
/// the generic formula.
pub fn term<B: Backend, const D: usize>(
    logits: &Tensor<B, D>,
    grad: Vec<f32>,
    value: f64,
) -> Result<Tensor<B, 1>, Vec<f32>> {
    let dims = logits.dims();
    if grad.len() != dims.iter().product::<usize>() {
        return Err(grad);
    }
    let Some(CpuInputs::Tracked([la])) = cpu_inputs([logits]) else {
        return Err(grad);
    };
    let y = nd(ndarray::arr1(&[value as f32]));
    let g = ArrayD::from_shape_vec(IxDyn(&dims), grad).expect("length checked");
    Ok(record(HostTerm, [&la], || g, y).expect("tracked inputs: B is Autodiff<NdArray>"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::autodiff_op::Ad;
    use burn::backend::ndarray::NdArrayDevice;
    use burn::tensor::TensorData;

    const DEV: NdArrayDevice = NdArrayDevice::Cpu;

    /// The term's value is the loss and the logits' gradient is `grad` times what flows in,
    /// as with the generic formula; a backend without the op gets the gradient back.
    #[test]
    fn hands_the_gradient_to_the_logits() {
        let shape = [2, 3, 4];
        let lv: Vec<f32> = (0..24).map(|i| i as f32 / 7.0 - 1.0).collect();
        let gv: Vec<f32> = (0..24).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        let run = |fused: bool| {
            let l =
                Tensor::<Ad, 3>::from_data(TensorData::new(lv.clone(), shape), &DEV).require_grad();
            let t = if fused {
                term(&l, gv.clone(), 1.25).expect("Autodiff<NdArray> takes the op")
            } else {
                let g = Tensor::<Ad, 3>::from_data(TensorData::new(gv.clone(), shape), &DEV);
                let lin = (l.clone() * g).sum();
                lin.clone() - lin.detach() + 1.25
            };
            let value = t.clone().into_scalar();
            let grads = (t * 3.0).backward();
            let g = l
                .grad(&grads)
                .unwrap()
                .into_data()
                .into_vec::<f32>()
                .unwrap();
            (value, g)
        };
        let (a, b) = (run(true), run(false));
        assert_eq!(a.0, 1.25);
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, b.1);
        assert_eq!(a.1, gv.iter().map(|x| x * 3.0).collect::<Vec<_>>());
        let plain = Tensor::<NdArray, 3>::zeros(shape, &DEV);
        assert_eq!(term(&plain, gv.clone(), 1.0).err(), Some(gv));
    }
}
