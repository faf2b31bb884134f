//! The product's stage kinds: small adapters from parameters and inputs to library calls.

pub mod anneal_train;
pub mod benchmark;
pub mod calibrate;
pub mod common;
pub mod evaluate;
pub mod export;
pub mod gate_insert;
pub mod load;
pub mod oneshot;
pub mod report;
pub mod slice;
pub mod threshold;
mod train_log;

use std::sync::Arc;

use crate::backend::DeviceSpec;
use crate::engine::registry::Registry;

/// Every stage kind this build provides, running models on the CPU (for validating, planning
/// and explaining recipes, where nothing runs).
pub fn registry() -> Registry {
    registry_on(DeviceSpec::Cpu)
}

/// Every stage kind this build provides, running models on `device`.
pub fn registry_on(device: DeviceSpec) -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(load::Load));
    r.register(Arc::new(gate_insert::GateInsert));
    r.register(Arc::new(calibrate::Calibrate { device }));
    r.register(Arc::new(anneal_train::AnnealTrain { device }));
    r.register(Arc::new(threshold::Threshold));
    r.register(Arc::new(slice::Slice));
    r.register(Arc::new(evaluate::Evaluate { device }));
    r.register(Arc::new(benchmark::Benchmark { device }));
    r.register(Arc::new(report::Report));
    r.register(Arc::new(export::Export));
    r.register(Arc::new(oneshot::Oneshot));
    r
}
