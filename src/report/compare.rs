//! `ddp-run compare`: one table over a run or a sweep, from the recipe and its lock file. By
//! default what a reader compares, one row per measured model (its evaluations and benchmarks
//! joined): the swept values, perplexity and its delta, accuracies, parameters kept, speed-ups
//! beside the ideal; or every metric of every instance; or chosen columns. Columns with no value
//! are never shown.

use std::collections::BTreeSet;

use serde_json::json;

use crate::engine::lockfile::LockFile;
use crate::engine::stage::Metrics;
use crate::recipe::{closest, Instance, Recipe};

/// The input by which measurements name the model they measured: instances that share it are
/// one row of the default table.
const MODEL_INPUT: &str = "model";

/// Which columns (and rows) a comparison shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Columns {
    /// What a reader compares (see [`headline_metrics`]); one row per measured model.
    Headline,
    /// Every metric; one row per instance.
    All,
    /// These columns, in this order (axis and metric names as [`Columns::All`] shows them);
    /// one row per measured model.
    Chosen(Vec<String>),
}

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Only instances of this stage.
    pub stage: Option<String>,
    /// Deltas against this instance (or row).
    pub baseline: Option<String>,
    /// The columns to show.
    pub columns: Columns,
    /// Each stage kind's headline metric (kind, metric): the default columns of a run that
    /// measured no model.
    pub kind_headlines: Vec<(String, String)>,
}

/// The table: a row per measured model (or per instance with [`Columns::All`]).
pub struct Comparison {
    /// Header: `instance`, the shown axes, then each shown metric (followed by `Δ METRIC` with a
    /// baseline).
    pub columns: Vec<String>,
    /// The sweep axes shown.
    pub axes: Vec<String>,
    /// The metrics shown.
    pub metrics: Vec<String>,
    /// Formatted cells, one row per instance, aligned with `columns` (empty when absent).
    pub rows: Vec<Vec<String>>,
    /// Every instance's parameters and metrics unformatted, whatever the columns:
    /// `{recipe, baseline, rows: [{instance, key, params, metrics}]}`, each row with a `delta`
    /// object too when there is a baseline.
    pub json: serde_json::Value,
}

/// Why [`compare`] has nothing to compare.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompareError {
    /// The lock file records no instance of the stage asked for.
    #[error("no recorded results for stage `{0}`: run the recipe first")]
    NoResultsFor(String),
    /// The lock file records no instance of the recipe at all.
    #[error("no recorded results: run the recipe first")]
    NoResults,
    /// The baseline instance asked for has no recorded result.
    #[error("baseline `{0}` has no recorded result")]
    NoBaseline(String),
    /// `--columns` named columns the table does not have.
    #[error("{0}")]
    UnknownColumns(String),
}

/// One row before formatting: its label, sweep values and metrics (merged over the instances
/// that measured one model).
struct Row<'a> {
    label: String,
    members: Vec<&'a Instance>,
    metrics: Metrics,
}

impl Row<'_> {
    fn axis(&self, axis: &str) -> Option<String> {
        self.members
            .iter()
            .flat_map(|i| &i.assignment)
            .find(|(n, _)| n == axis)
            .map(|(_, v)| v.to_string().trim_matches('"').to_string())
    }
}

fn fmt(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e15 {
        format!("{x:.0}")
    } else if x.abs() >= 100.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

/// Compares the instances (of `opts.stage`, or all) recorded in the lock file.
pub fn compare(
    recipe: &Recipe,
    lock: &LockFile,
    opts: &CompareOptions,
) -> Result<Comparison, CompareError> {
    let insts: Vec<&Instance> = recipe
        .instances
        .iter()
        .filter(|i| opts.stage.as_ref().is_none_or(|s| &i.stage == s))
        .filter(|i| lock.stages.contains_key(&i.name))
        .collect();
    if insts.is_empty() {
        return Err(match &opts.stage {
            Some(s) => CompareError::NoResultsFor(s.clone()),
            None => CompareError::NoResults,
        });
    }
    let rows = rows(recipe, &insts, lock, opts.columns == Columns::All);
    let cols = columns_of(recipe, &rows, opts)?;
    let base = baseline(opts.baseline.as_deref(), &rows, lock)?;
    let metrics: Vec<&String> = cols.iter().filter_map(Col::metric).collect();
    // Rows that have none of the metrics shown say nothing (unless only axes were asked for).
    let rows: Vec<Row> = rows
        .into_iter()
        .filter(|r| {
            opts.columns == Columns::All
                || metrics.is_empty()
                || metrics.iter().any(|m| r.metrics.contains_key(*m))
        })
        .collect();
    let columns = header(&cols, base.is_some());
    let mut cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| row_cells(r, &cols, base.as_ref()))
        .collect();
    let columns = drop_empty_columns(columns, &mut cells);
    let shown = |c: &String| columns.contains(c);
    Ok(Comparison {
        axes: cols
            .iter()
            .filter_map(|c| match c {
                Col::Axis(a) if shown(a) => Some(a.clone()),
                _ => None,
            })
            .collect(),
        metrics: metrics.into_iter().filter(|m| shown(m)).cloned().collect(),
        columns,
        rows: cells,
        json: to_json(
            recipe,
            lock,
            &insts,
            opts.baseline.as_deref(),
            base.as_ref(),
        ),
    })
}

/// The columns `opts` asks for: the axes some row has, then every metric (`--all`), the
/// headline ones, or those chosen.
fn columns_of(
    recipe: &Recipe,
    rows: &[Row],
    opts: &CompareOptions,
) -> Result<Vec<Col>, CompareError> {
    let axes: Vec<String> = recipe
        .axes
        .iter()
        .map(|a| a.name.clone())
        .filter(|a| rows.iter().any(|r| r.axis(a).is_some()))
        .collect();
    let all_metrics: Vec<String> = rows
        .iter()
        .flat_map(|r| r.metrics.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    Ok(match &opts.columns {
        Columns::All => axes
            .into_iter()
            .map(Col::Axis)
            .chain(all_metrics.into_iter().map(Col::Metric))
            .collect(),
        Columns::Headline => {
            let mut m = headline_metrics(&all_metrics);
            if m.is_empty() {
                m = kind_headlines(rows, &opts.kind_headlines, &all_metrics);
            }
            axes.into_iter()
                .map(Col::Axis)
                .chain(m.into_iter().map(Col::Metric))
                .collect()
        }
        Columns::Chosen(c) => chosen(c, &axes, &all_metrics)?,
    })
}

/// The table's header: the instance, then each column, a metric followed by its delta when
/// there is a baseline.
fn header(cols: &[Col], with_delta: bool) -> Vec<String> {
    let mut columns = vec!["instance".to_string()];
    for c in cols {
        match c {
            Col::Axis(a) => columns.push(a.clone()),
            Col::Metric(m) => {
                columns.push(m.clone());
                if with_delta {
                    columns.push(format!("Δ {m}"));
                }
            }
        }
    }
    columns
}

/// A column of the table: a sweep axis's values or a metric.
enum Col {
    Axis(String),
    Metric(String),
}

impl Col {
    fn metric(&self) -> Option<&String> {
        match self {
            Col::Metric(m) => Some(m),
            Col::Axis(_) => None,
        }
    }
}

/// The rows: one per instance (`per_instance`), or one per measured model: an instance with a
/// `model` input that sweeps nothing the model does not (an evaluation, a benchmark; not a
/// gate-insert swept over sparsities of one dense model) joins the row of that model, named
/// after it, with the model's own instance if compared.
fn rows<'a>(
    recipe: &Recipe,
    insts: &[&'a Instance],
    lock: &LockFile,
    per_instance: bool,
) -> Vec<Row<'a>> {
    let mut rows: Vec<Row> = vec![];
    for i in insts {
        let measured = i.inputs.get(MODEL_INPUT).filter(|m| {
            recipe
                .instance(m)
                .is_some_and(|m| i.assignment.iter().all(|a| m.assignment.contains(a)))
        });
        let label = match measured {
            Some(model) if !per_instance => model.clone(),
            _ => i.name.clone(),
        };
        let at = match rows.iter().position(|r| r.label == label) {
            Some(at) => at,
            None => {
                rows.push(Row {
                    label,
                    members: vec![],
                    metrics: Metrics::new(),
                });
                rows.len() - 1
            }
        };
        let r = &mut rows[at];
        r.members.push(i);
        for (k, v) in &lock.stages[&i.name].metrics {
            // Two measurements of one model naming a metric alike: the first one's stands.
            r.metrics.entry(k.clone()).or_insert(*v);
        }
    }
    rows
}

/// What a reader compares, in reading order: perplexity and its delta against the dense model,
/// the accuracies, the share of parameters kept, and each speed-up beside its ideal (the FLOPs
/// ratio).
pub fn headline_metrics(metrics: &[String]) -> Vec<String> {
    let has = |m: &str| metrics.iter().any(|x| x == m);
    let mut out: Vec<String> = ["perplexity", "delta.perplexity"]
        .into_iter()
        .filter(|m| has(m))
        .map(String::from)
        .collect();
    out.extend(
        metrics
            .iter()
            .filter(|m| m.ends_with("_acc") && !m.starts_with("delta."))
            .cloned(),
    );
    if has("params_kept") {
        out.push("params_kept".into());
    }
    for s in metrics.iter().filter(|m| m.starts_with("speedup.")) {
        out.push(s.clone());
        if let Some(ideal) = ideal_of(s).filter(|i| has(i) && !out.contains(i)) {
            out.push(ideal);
        }
    }
    out
}

/// The ideal speed-up of a measured one: `speedup.decode.bB` -> `ideal.decode`,
/// `speedup.prefill.bB.pP` -> `ideal.prefill.pP`.
fn ideal_of(speedup: &str) -> Option<String> {
    let rest = speedup.strip_prefix("speedup.")?;
    let mut parts = rest.split('.');
    let phase = parts.next()?;
    let _batch = parts.next();
    Some(match parts.next() {
        Some(p) => format!("ideal.{phase}.{p}"),
        None => format!("ideal.{phase}"),
    })
}

/// The headline metric of each compared instance's kind (for runs that measured no model).
fn kind_headlines(rows: &[Row], kinds: &[(String, String)], metrics: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for i in rows.iter().flat_map(|r| &r.members) {
        if let Some((_, m)) = kinds.iter().find(|(k, _)| *k == i.kind) {
            if metrics.contains(m) && !out.contains(m) {
                out.push(m.clone());
            }
        }
    }
    out
}

/// `--columns`: each an axis or a metric, in the order given; unknown names are an error with
/// the nearest known name.
fn chosen(names: &[String], axes: &[String], metrics: &[String]) -> Result<Vec<Col>, CompareError> {
    let known: Vec<&str> = axes.iter().chain(metrics).map(String::as_str).collect();
    let unknown: Vec<String> = names
        .iter()
        .filter(|n| !known.contains(&n.as_str()))
        .map(|n| match closest(n, &known) {
            Some(c) => format!("`{n}` (did you mean `{c}`?)"),
            None => format!("`{n}`"),
        })
        .collect();
    if !unknown.is_empty() {
        let list = if known.len() <= 40 {
            format!("the columns are: {}", known.join(", "))
        } else {
            "`--all` shows every column".to_string()
        };
        return Err(CompareError::UnknownColumns(format!(
            "--columns: no column {} ({list})",
            unknown.join(", ")
        )));
    }
    Ok(names
        .iter()
        .map(|n| {
            if axes.contains(n) {
                Col::Axis(n.clone())
            } else {
                Col::Metric(n.clone())
            }
        })
        .collect())
}

/// The baseline's metrics: the row of that name or holding that instance, else the instance's
/// recorded metrics (e.g. outside `--stage`).
fn baseline(
    b: Option<&str>,
    rows: &[Row],
    lock: &LockFile,
) -> Result<Option<Metrics>, CompareError> {
    let Some(b) = b else { return Ok(None) };
    let row = rows
        .iter()
        .find(|r| r.label == b)
        .or_else(|| rows.iter().find(|r| r.members.iter().any(|i| i.name == b)));
    match row {
        Some(r) => Ok(Some(r.metrics.clone())),
        None => lock
            .stages
            .get(b)
            .map(|s| Some(s.metrics.clone()))
            .ok_or_else(|| CompareError::NoBaseline(b.to_string())),
    }
}

/// A row's cells: label, then each column (a metric followed by its delta against `base`).
fn row_cells(r: &Row, cols: &[Col], base: Option<&Metrics>) -> Vec<String> {
    let mut row = vec![r.label.clone()];
    for c in cols {
        let m = match c {
            Col::Axis(a) => {
                row.push(r.axis(a).unwrap_or_default());
                continue;
            }
            Col::Metric(m) => m,
        };
        let v = r.metrics.get(m).copied();
        row.push(v.map_or(String::new(), fmt));
        if let Some(b) = base {
            let d = v.zip(b.get(m)).map(|(x, y)| x - y);
            row.push(d.map_or(String::new(), |d| {
                format!("{}{}", if d >= 0.0 { "+" } else { "" }, fmt(d))
            }));
        }
    }
    row
}

/// Removes every column (but the first) that has no value in any row.
fn drop_empty_columns(columns: Vec<String>, rows: &mut [Vec<String>]) -> Vec<String> {
    let keep: Vec<bool> = (0..columns.len())
        .map(|c| c == 0 || rows.iter().any(|r| !r[c].is_empty()))
        .collect();
    for r in rows.iter_mut() {
        let mut k = keep.iter();
        r.retain(|_| *k.next().unwrap_or(&true));
    }
    let mut k = keep.iter();
    columns
        .into_iter()
        .filter(|_| *k.next().unwrap_or(&true))
        .collect()
}

/// Every compared instance unformatted (as `compare.json` has always held them).
fn to_json(
    recipe: &Recipe,
    lock: &LockFile,
    insts: &[&Instance],
    baseline: Option<&str>,
    base: Option<&Metrics>,
) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = insts
        .iter()
        .map(|i| {
            let rec = &lock.stages[&i.name];
            let mut j = json!({"instance": i.name, "key": rec.key, "params": rec.params, "metrics": rec.metrics});
            if let Some(b) = base {
                for (m, v) in &rec.metrics {
                    if let Some(y) = b.get(m) {
                        j["delta"][m] = json!(v - y);
                    }
                }
            }
            j
        })
        .collect();
    json!({"recipe": recipe.name, "baseline": baseline, "rows": rows})
}

impl Comparison {
    /// The table as GitHub-flavoured Markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "| {} |\n|{}|\n",
            self.columns.join(" | "),
            vec!["---"; self.columns.len()].join("|")
        );
        for r in &self.rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s
    }

    /// The table as CSV (cells quoted when they hold `,` or `"`).
    pub fn csv(&self) -> String {
        let q = |x: &String| {
            if x.contains([',', '"']) {
                format!("\"{}\"", x.replace('"', "\"\""))
            } else {
                x.clone()
            }
        };
        let mut s = self.columns.iter().map(q).collect::<Vec<_>>().join(",") + "\n";
        for r in &self.rows {
            s.push_str(&(r.iter().map(q).collect::<Vec<_>>().join(",") + "\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headline_metrics_put_each_speedup_beside_its_ideal() {
        let m: Vec<String> = [
            "cloze_mc_acc",
            "cloze_mc_acc_stderr",
            "delta.cloze_mc_acc",
            "delta.perplexity",
            "ideal.decode",
            "ideal.prefill.p16",
            "lambada_acc",
            "params_kept",
            "params_total",
            "perplexity",
            "speedup.decode.b1",
            "speedup.prefill.b1.p16",
            "uncertainty.decode.b1",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            headline_metrics(&m),
            [
                "perplexity",
                "delta.perplexity",
                "cloze_mc_acc",
                "lambada_acc",
                "params_kept",
                "speedup.decode.b1",
                "ideal.decode",
                "speedup.prefill.b1.p16",
                "ideal.prefill.p16"
            ]
        );
    }

    #[test]
    fn empty_columns_are_dropped() {
        let mut rows = vec![
            vec!["a".into(), "".into(), "1".into()],
            vec!["b".into(), "".into(), "".into()],
        ];
        let cols = drop_empty_columns(vec!["instance".into(), "x".into(), "y".into()], &mut rows);
        assert_eq!(cols, ["instance", "y"]);
        assert_eq!(rows, [vec!["a", "1"], vec!["b", ""]]);
    }
}
