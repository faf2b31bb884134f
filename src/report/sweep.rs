//! The rows of a run's report: one per evaluated model, joined with its benchmark and with
//! what made it (method, target sparsity, training log, final mask), found through the engine's
//! lineage of the evaluation's entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::cache::Manifest;
use crate::engine::lineage::{ancestors, manifest_at as read_manifest};
use crate::engine::stage::{Input, Metrics};

/// One evaluated model of a report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// "dense", or "METHOD @ TARGET".
    pub label: String,
    /// `method` of the anneal-train or oneshot stage that pruned the model; "dense" if none did.
    pub method: String,
    /// Target sparsity (the gate-insert `sparsity`); `None` for a dense model.
    pub target: Option<f64>,
    /// Name of the evaluate instance.
    pub instance: String,
    /// Metrics of the evaluation.
    pub eval: Metrics,
    /// Metrics of a benchmark of the same model, if the report gathered one.
    pub bench: Option<Metrics>,
    /// Entry directory of the anneal-train run that produced the model, if any.
    pub train_dir: Option<PathBuf>,
    /// Entry directory of the threshold stage (the final mask) that produced it, if any.
    pub mask_dir: Option<PathBuf>,
}

impl Row {
    /// Whether the model is unpruned.
    pub fn is_dense(&self) -> bool {
        self.method == "dense"
    }
}

fn param_str(m: &Manifest, k: &str) -> Option<String> {
    m.params.get(k).and_then(|v| v.as_str()).map(String::from)
}

/// The stage kinds, inputs and parameters a row is assembled from. The stages define them
/// (this module does not depend on `stages`); the report only follows the lineage.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// Kind of an evaluation (one row each).
    pub evaluate: &'a str,
    /// Kind of a benchmark (joined to the row of the model it measured).
    pub benchmark: &'a str,
    /// The input of evaluations and benchmarks that names the measured model.
    pub model_input: &'a str,
    /// Kind of the training that pruned a model.
    pub trained: &'a str,
    /// Kind of a one-shot pruning.
    pub oneshot: &'a str,
    /// Their parameter naming the method.
    pub method_param: &'a str,
    /// Kind that set the target, and its parameter.
    pub gates: (&'a str, &'a str),
    /// Kind of the final mask.
    pub mask: &'a str,
}

/// Builds rows from the gathered inputs of a report stage.
pub fn rows(inputs: &BTreeMap<String, Input>, cache: &Path, src: &Sources) -> Vec<Row> {
    // Benchmarks by the key of the model they measured.
    let mut bench_by_model: BTreeMap<String, Metrics> = BTreeMap::new();
    for inp in inputs.values().filter(|i| i.kind == src.benchmark) {
        if let Some(m) = read_manifest(&inp.dir) {
            if let Some(k) = m.inputs.get(src.model_input) {
                bench_by_model.insert(k.clone(), inp.metrics.clone());
            }
        }
    }
    let mut rows = vec![];
    for (name, inp) in inputs.iter().filter(|(_, i)| i.kind == src.evaluate) {
        let Some(me) = read_manifest(&inp.dir) else {
            continue;
        };
        let model_key = me.inputs.get(src.model_input).cloned().unwrap_or_default();
        let anc = ancestors(cache, &inp.dir);
        let by_kind = |kind: &str| anc.iter().find(|(_, m)| m.kind == kind);
        let trained = by_kind(src.trained);
        let oneshot = by_kind(src.oneshot);
        let method = trained
            .or(oneshot)
            .and_then(|(_, m)| param_str(m, src.method_param))
            .unwrap_or_else(|| "dense".into());
        let (gates, sparsity) = src.gates;
        let target = by_kind(gates).and_then(|(_, m)| m.params.get(sparsity)?.as_f64());
        let label = match target {
            Some(t) if method != "dense" => format!("{method} @ {t}"),
            _ => method.clone(),
        };
        rows.push(Row {
            label,
            method,
            target: if trained.or(oneshot).is_some() {
                target
            } else {
                None
            },
            instance: name.clone(),
            eval: inp.metrics.clone(),
            bench: bench_by_model.get(&model_key).cloned(),
            train_dir: trained.map(|(d, _)| d.clone()),
            mask_dir: by_kind(src.mask).map(|(d, _)| d.clone()),
        });
    }
    rows.sort_by(|a, b| {
        (!a.is_dense(), &a.method, a.target.unwrap_or(0.0).to_bits()).cmp(&(
            !b.is_dense(),
            &b.method,
            b.target.unwrap_or(0.0).to_bits(),
        ))
    });
    rows
}
