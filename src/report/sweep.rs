//! The rows of a run's report: one per evaluated model, joined with its benchmark and with
//! what made it (method, target sparsity, training log, final mask), found through the engine's
//! lineage of the evaluation's entry.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::artifacts::TRAIN_LOG;
use crate::engine::cache::Manifest;
use crate::engine::lineage::{ancestors, manifest_at as read_manifest};
use crate::engine::stage::{Input, Metrics};

/// One evaluated model of a report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// "dense", or "METHOD @ TARGET", followed by `, PARAM=VALUE` for each of `varied`.
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
    /// Tokens of the training run's steps (`None`: not trained, or not recorded).
    pub tokens_trained: Option<f64>,
    /// The parameters of its lineage whose values differ between the rows of the same method
    /// and target (what the label names beside them), upstream stages first.
    pub varied: Vec<Varied>,
}

/// A parameter that tells a row from the others of its method and target.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Varied {
    /// The parameter's name, `KIND.NAME` when another stage kind's same-named parameter varies
    /// too.
    pub param: String,
    /// Its value for this row (null when the row's lineage has no such parameter).
    pub value: Value,
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
    /// The training's metric of the tokens its steps trained on (else the `tokens` column of
    /// its train_log.csv, one value per step, is summed).
    pub tokens_trained: &'a str,
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
    let mut lineages = vec![];
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
            tokens_trained: trained.and_then(|(d, m)| {
                m.metrics
                    .get(src.tokens_trained)
                    .copied()
                    .or_else(|| logged_tokens(&d.join(TRAIN_LOG)))
            }),
            varied: vec![],
        });
        lineages.push(lineage_params(&anc));
    }
    name_varied(&mut rows, &lineages);
    rows.sort_by(|a, b| {
        (!a.is_dense(), &a.method, a.target.unwrap_or(0.0).to_bits())
            .cmp(&(!b.is_dense(), &b.method, b.target.unwrap_or(0.0).to_bits()))
            .then(
                a.tokens_trained
                    .unwrap_or(0.0)
                    .total_cmp(&b.tokens_trained.unwrap_or(0.0)),
            )
            .then_with(|| cmp_varied(&a.varied, &b.varied))
    });
    rows
}

/// Tokens trained as train_log.csv records them: its `tokens` column summed over its steps
/// (one value per step; the log has a row per family). `None` without such a log or column.
fn logged_tokens(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next()?.split(',').collect();
    let step = head.iter().position(|h| *h == "step")?;
    let tokens = head.iter().position(|h| *h == "tokens")?;
    let mut seen = BTreeSet::new();
    let mut total = 0.0;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(s), Some(t)) = (
            f.get(step),
            f.get(tokens).and_then(|t| t.parse::<f64>().ok()),
        ) else {
            continue;
        };
        if seen.insert(s.to_string()) {
            total += t;
        }
    }
    (!seen.is_empty()).then_some(total)
}

/// Per stage kind of a lineage (its nearest entry of each kind), nearest first: the kind and
/// its parameters.
type Lineage = Vec<(String, serde_json::Map<String, Value>)>;

fn lineage_params(anc: &[(PathBuf, Manifest)]) -> Lineage {
    let mut out: Lineage = vec![];
    for (_, m) in anc {
        if out.iter().all(|(k, _)| *k != m.kind) {
            out.push((
                m.kind.clone(),
                m.params.as_object().cloned().unwrap_or_default(),
            ));
        }
    }
    out
}

/// Fills each row's `varied` (the lineage parameters whose values differ among the rows of its
/// method and target, upstream kinds first, then by name) and names them in its label.
fn name_varied(rows: &mut [Row], lineages: &[Lineage]) {
    let group = |r: &Row| (r.method.clone(), r.target.map(f64::to_bits));
    let groups: BTreeSet<_> = rows.iter().map(group).collect();
    for g in groups {
        let members: Vec<usize> = (0..rows.len()).filter(|&i| group(&rows[i]) == g).collect();
        if members.len() < 2 {
            continue;
        }
        let get = |i: usize, kind: &str, p: &str| {
            lineages[i]
                .iter()
                .find(|(k, _)| k == kind)
                .and_then(|(_, ps)| ps.get(p).cloned())
                .unwrap_or(Value::Null)
        };
        // Every (kind, param) any member has, in the first member's lineage order reversed
        // (upstream first); kinds only other members have go last.
        let first = &lineages[members[0]];
        let rank = |kind: &str| {
            first
                .iter()
                .position(|(k, _)| k == kind)
                .map_or(usize::MAX, |p| first.len() - p)
        };
        let mut keys: Vec<(usize, String, String)> = members
            .iter()
            .flat_map(|&i| &lineages[i])
            .flat_map(|(k, ps)| ps.keys().map(|p| (rank(k), k.clone(), p.clone())))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|(_, k, p)| {
                let v = get(members[0], k, p);
                members.iter().any(|&i| get(i, k, p) != v)
            })
            .collect();
        keys.sort_by(|a, b| (a.0, &a.2, &a.1).cmp(&(b.0, &b.2, &b.1)));
        let clash = |p: &str| keys.iter().filter(|(_, _, q)| q == p).count() > 1;
        let names: Vec<String> = keys
            .iter()
            .map(|(_, k, p)| {
                if clash(p) {
                    format!("{k}.{p}")
                } else {
                    p.clone()
                }
            })
            .collect();
        for &i in &members {
            let varied: Vec<Varied> = keys
                .iter()
                .zip(&names)
                .map(|((_, k, p), n)| Varied {
                    param: n.clone(),
                    value: get(i, k, p),
                })
                .collect();
            for v in &varied {
                rows[i].label += &format!(", {}={}", v.param, show(&v.value));
            }
            rows[i].varied = varied;
        }
    }
}

/// A parameter value as a label shows it: strings unquoted, a missing one as `—`.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".into(),
        v => v.to_string(),
    }
}

/// Rows of one method and target in the order of their varied values (numbers as numbers).
fn cmp_varied(a: &[Varied], b: &[Varied]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x.value.as_f64(), y.value.as_f64()) {
            (Some(p), Some(q)) => p.total_cmp(&q),
            _ => show(&x.value).cmp(&show(&y.value)),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::logged_tokens;

    #[test]
    fn tokens_trained_from_a_log_count_each_step_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("train_log.csv");
        // Two families per step; step 2 with a shorter last batch.
        let rows = "step,family,tokens\n0,heads,32\n0,channels,32\n1,heads,32\n1,channels,32\n2,heads,16\n2,channels,16\n";
        std::fs::write(&p, rows).unwrap();
        assert_eq!(logged_tokens(&p), Some(80.0));
        std::fs::write(&p, "step,family\n0,heads\n").unwrap();
        assert_eq!(logged_tokens(&p), None, "no tokens column");
        assert_eq!(logged_tokens(&d.path().join("none.csv")), None);
    }
}
