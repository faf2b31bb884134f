//! The trained parameters of one micro-batch as autodiff leaves: `z` per family and layer and
//! the multipliers per family (and the joint budget's), the gates the student runs with, and their gradients read back.

use burn::tensor::{backend::AutodiffBackend, Tensor, TensorData};

use super::optim::Grads;
use super::{Family, GateState, Method};
use crate::model::{Gates, LayerGates};
use crate::prune::family::FamilyKind;

/// Leaves of the graph, fresh from the host state each micro-batch.
pub(crate) struct Leaves<B: AutodiffBackend> {
    /// `z` per family and layer; `None` where a layer has no unit of the family (e.g. expert
    /// channels in a dense layer).
    pub(crate) z: Vec<Vec<Option<Tensor<B, 1>>>>,
    /// `[lambda1, lambda2, lambda3]` per family.
    pub(crate) lambdas: Vec<Tensor<B, 1>>,
    /// The joint budget's `[L1, L2]`, if it has one.
    pub(crate) joint: Option<Tensor<B, 1>>,
}

/// A leaf holding `values`, on `dev`, tracking gradients.
fn leaf<B: AutodiffBackend>(values: &[f64], dev: &B::Device) -> Tensor<B, 1> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    let n = v.len();
    Tensor::<B, 1>::from_data(TensorData::new(v, [n]), dev).require_grad()
}

impl<B: AutodiffBackend> Leaves<B> {
    /// The leaves of `state`'s families and joint budget, on `dev`, tracking gradients.
    pub(crate) fn new(state: &GateState, dev: &B::Device) -> Self {
        let families = &state.families;
        let z = families
            .iter()
            .map(|f| {
                f.z.iter()
                    .map(|l| {
                        (!l.is_empty()).then(|| {
                            Tensor::<B, 1>::from_data(TensorData::new(l.clone(), [l.len()]), dev)
                                .require_grad()
                        })
                    })
                    .collect()
            })
            .collect();
        let lambdas = families.iter().map(|f| leaf(&f.lambdas, dev)).collect();
        let joint = state.joint.as_ref().map(|j| leaf(&j.lambdas, dev));
        Self { z, lambdas, joint }
    }

    /// The student's gates under `method`: each family's masks go to its slot of every layer
    /// (`expert_shapes`, one per layer of the model, reshapes the expert-channel gates).
    /// `noise_seed(family, layer)` seeds the hard-concrete noise.
    pub(crate) fn gates(
        &self,
        families: &[Family],
        method: Method,
        noise_seed: impl Fn(usize, usize) -> u64,
        expert_shapes: &[Option<[usize; 2]>],
        dev: &B::Device,
    ) -> Gates<B> {
        let mut layers: Vec<LayerGates<B>> = (0..expert_shapes.len())
            .map(|_| LayerGates::default())
            .collect();
        for (fi, (f, zf)) in families.iter().zip(&self.z).enumerate() {
            for (i, z) in zf.iter().enumerate() {
                let Some(z) = z else { continue };
                let m = method.mask(z.clone(), noise_seed(fi, i), dev);
                match f.name {
                    FamilyKind::Heads => layers[i].heads = Some(m),
                    // Non-empty only where checked to match `expert_shapes`.
                    FamilyKind::Experts => {
                        layers[i].experts = expert_shapes[i].map(|sh| m.reshape(sh))
                    }
                    FamilyKind::Channels => layers[i].channels = Some(m),
                }
            }
        }
        Gates { layers }
    }

    /// Adds the leaves' gradients in `grads` to `acc`.
    pub(crate) fn add_grads(&self, grads: &B::Gradients, acc: &mut Grads) {
        for (fi, zf) in self.z.iter().enumerate() {
            for (i, z) in zf.iter().enumerate() {
                let Some(z) = z else { continue };
                add(&mut acc.z[fi][i], host(z.grad(grads)));
            }
            add(&mut acc.lambdas[fi], host(self.lambdas[fi].grad(grads)));
        }
        if let Some(j) = &self.joint {
            add(&mut acc.joint, host(j.grad(grads)));
        }
    }
}

/// A gradient on the host (empty where the leaf has none).
fn host<B: burn::tensor::backend::Backend>(g: Option<Tensor<B, 1>>) -> Vec<f32> {
    g.map(|g| g.into_data().into_vec::<f32>().unwrap_or_default())
        .unwrap_or_default()
}

/// `acc += g`, elementwise in f64.
fn add(acc: &mut [f64], g: Vec<f32>) {
    for (acc, x) in acc.iter_mut().zip(g) {
        *acc += x as f64;
    }
}
