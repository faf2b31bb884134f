//! Tables over a run or a sweep, built from manifests / lock files (never from logs).

pub(crate) mod plots;
pub(crate) mod sweep;
pub(crate) mod write;

use std::collections::BTreeSet;

use serde_json::json;

use crate::engine::lockfile::LockFile;
use crate::recipe::Recipe;

/// One row per instance: its sweep values and metrics (and deltas against a baseline).
pub struct Comparison {
    /// Header: `instance`, the axes, then each metric (followed by `Δ METRIC` with a baseline).
    pub columns: Vec<String>,
    /// Sweep axes that at least one compared instance is assigned.
    pub axes: Vec<String>,
    /// Every metric any compared instance recorded, sorted.
    pub metrics: Vec<String>,
    /// Formatted cells, one row per instance, aligned with `columns` (empty when absent).
    pub rows: Vec<Vec<String>>,
    /// The same data unformatted: `{recipe, baseline, rows: [{instance, key, params, metrics}]}`,
    /// each row with a `delta` object too when there is a baseline.
    pub json: serde_json::Value,
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
}

/// Compares the instances of `stage` (every stage if `None`) recorded in the lock file.
pub fn compare(
    recipe: &Recipe,
    lock: &LockFile,
    stage: Option<&str>,
    baseline: Option<&str>,
) -> Result<Comparison, CompareError> {
    let insts: Vec<_> = recipe
        .instances
        .iter()
        .filter(|i| stage.is_none_or(|s| i.stage == s))
        .filter(|i| lock.stages.contains_key(&i.name))
        .collect();
    if insts.is_empty() {
        return Err(match stage {
            Some(s) => CompareError::NoResultsFor(s.to_string()),
            None => CompareError::NoResults,
        });
    }
    let base = match baseline {
        None => None,
        Some(b) => Some(
            lock.stages
                .get(b)
                .ok_or_else(|| CompareError::NoBaseline(b.to_string()))?,
        ),
    };
    let axes: Vec<String> = recipe
        .axes
        .iter()
        .map(|a| a.name.clone())
        .filter(|a| {
            insts
                .iter()
                .any(|i| i.assignment.iter().any(|(n, _)| n == a))
        })
        .collect();
    let metrics: BTreeSet<String> = insts
        .iter()
        .flat_map(|i| lock.stages[&i.name].metrics.keys().cloned())
        .collect();
    let metrics: Vec<String> = metrics.into_iter().collect();
    let mut columns = vec!["instance".to_string()];
    columns.extend(axes.iter().cloned());
    for m in &metrics {
        columns.push(m.clone());
        if base.is_some() {
            columns.push(format!("Δ {m}"));
        }
    }
    let mut rows = vec![];
    let mut jrows = vec![];
    for i in &insts {
        let rec = &lock.stages[&i.name];
        let mut row = vec![i.name.clone()];
        let mut jrow = json!({"instance": i.name, "key": rec.key, "params": rec.params, "metrics": rec.metrics});
        for a in &axes {
            row.push(
                i.assignment
                    .iter()
                    .find(|(n, _)| n == a)
                    .map_or(String::new(), |(_, v)| {
                        v.to_string().trim_matches('"').to_string()
                    }),
            );
        }
        for m in &metrics {
            let v = rec.metrics.get(m).copied();
            row.push(v.map_or(String::new(), fmt));
            if let Some(b) = base {
                let d = v.zip(b.metrics.get(m)).map(|(x, y)| x - y);
                row.push(d.map_or(String::new(), |d| {
                    format!("{}{}", if d >= 0.0 { "+" } else { "" }, fmt(d))
                }));
                if let Some(d) = d {
                    jrow["delta"][m] = json!(d);
                }
            }
        }
        rows.push(row);
        jrows.push(jrow);
    }
    Ok(Comparison {
        columns,
        axes,
        metrics,
        rows,
        json: json!({"recipe": recipe.name, "baseline": baseline, "rows": jrows}),
    })
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
