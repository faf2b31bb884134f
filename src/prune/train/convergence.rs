//! Whether a training converged, family by family, in the paper's sense: the expected sparsity
//! at its target, the retention scores binary, and the deployed rule (`ReLU(z) > 0`) removing
//! what the expected sparsity promised. With a joint budget ([`super::Joint`]) the families'
//! own targets are not constraints: the removed-parameter fraction is ([`joint_convergence`]),
//! and every family must still be binary.

use super::{deployed_values, GateState, StepLog};

/// How close to its target (in sparsity) and to binary a converged family is (the paper reports
/// the achieved sparsity within ~1 % of the target).
pub const TOLERANCE: f64 = 0.01;

/// One family's convergence figures at the end of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyConvergence {
    /// The family's name.
    pub name: String,
    /// Its target sparsity.
    pub target: f64,
    /// Expected sparsity `1 - mean s` at the last step.
    pub expected: f64,
    /// Mean `s (1 - s)` at the last step (0: every score binary).
    pub binarity: f64,
    /// Fraction of its units whose deployed value is 0: what the `relu` rule removes.
    pub relu: f64,
}

impl FamilyConvergence {
    /// Whether the figures are within [`TOLERANCE`]: expected and relu sparsity of the target,
    /// binarity of 0.
    pub fn converged(&self) -> bool {
        (self.expected - self.target).abs() <= TOLERANCE
            && self.binarity <= TOLERANCE
            && (self.relu - self.target).abs() <= TOLERANCE
    }
}

/// The convergence figures of a joint budget at the end of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct JointConvergence {
    /// The fraction of the covered parameters to remove.
    pub target: f64,
    /// The expected fraction removed, `q_p`, at the last step.
    pub expected: f64,
    /// The fraction the `relu` rule removes (units whose deployed value is 0, weighted by their
    /// parameters).
    pub relu: f64,
}

impl JointConvergence {
    /// Whether the expected and relu fractions are within [`TOLERANCE`] of the target.
    pub fn on_target(&self) -> bool {
        (self.expected - self.target).abs() <= TOLERANCE
            && (self.relu - self.target).abs() <= TOLERANCE
    }
}

/// Whether a run converged: with a joint budget (`joint`), the budget on target and every family
/// binary; without, every family converged.
pub fn converged(families: &[FamilyConvergence], joint: Option<&JointConvergence>) -> bool {
    match joint {
        Some(j) => j.on_target() && families.iter().all(|c| c.binarity <= TOLERANCE),
        None => families.iter().all(FamilyConvergence::converged),
    }
}

/// The joint budget's convergence figures of `state` (none without one), its last step being
/// `last`.
pub fn joint_convergence(state: &GateState, last: &StepLog) -> Option<JointConvergence> {
    let j = state.joint.as_ref()?;
    let zeros: Vec<Vec<f64>> = state
        .families
        .iter()
        .map(|f| {
            deployed_values(state.method, &f.z)
                .iter()
                .map(|l| l.iter().filter(|&&v| v == 0.0).count() as f64)
                .collect()
        })
        .collect();
    Some(JointConvergence {
        target: j.target,
        expected: last.joint.map_or(f64::NAN, |x| x.0),
        relu: j.removed_fraction(&state.families, |f, l| zeros[f][l]),
    })
}

/// The convergence figures of every family of `state`, its last step being `last`.
pub fn convergence(state: &GateState, last: &StepLog) -> Vec<FamilyConvergence> {
    state
        .families
        .iter()
        .zip(&last.families)
        .map(|(f, (name, q, _, _, _, bin))| {
            let values = deployed_values(state.method, &f.z);
            let total: usize = values.iter().map(Vec::len).sum();
            let zero = values.iter().flatten().filter(|&&v| v == 0.0).count();
            FamilyConvergence {
                name: name.clone(),
                target: f.target,
                expected: *q,
                binarity: *bin,
                relu: zero as f64 / total.max(1) as f64,
            }
        })
        .collect()
}
