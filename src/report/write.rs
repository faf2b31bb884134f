//! A run's report: report.md (the table of every evaluated model with deltas against dense and
//! speed-ups beside the ideal, and the plots), report.json and report.csv with the same data.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::json;

use super::plots::{self, ErrSeries, Panel, Series};
use super::sweep::Row;
use crate::artifacts::{MASK, REPORT_CSV, REPORT_JSON, REPORT_MD, TRAIN_LOG};
use crate::error::{Error, Result};
use crate::prune::mask::FinalMask;

fn removed_pct(r: &Row) -> Option<f64> {
    if r.is_dense() {
        return Some(0.0);
    }
    r.eval.get("params_kept").map(|k| (1.0 - k) * 100.0)
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
            c
        } else {
            '_'
        };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    out.trim_matches('_').to_string()
}

/// The train_log.csv of a run: column name -> (step, value), and per family the expected
/// sparsity.
type Curves = (
    BTreeMap<String, Vec<(f64, f64)>>,
    BTreeMap<String, Vec<(f64, f64)>>,
);

fn read_log(path: &Path) -> Result<Curves> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |n: &str| head.iter().position(|h| *h == n);
    let (Some(step), Some(fam), Some(q)) = (col("step"), col("family"), col("expected_sparsity"))
    else {
        return Err(Error::bad_file(
            path,
            "expected columns step, family, expected_sparsity",
        ));
    };
    let mut cols: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut fams: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut last_step = f64::NAN;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
        let Some(s) = num(step) else { continue };
        if let Some(v) = num(q) {
            fams.entry(f[fam].to_string()).or_default().push((s, v));
        }
        if s != last_step {
            for name in ["loss", "ce", "kl", "mu", "lr_z"] {
                if let Some(v) = col(name).and_then(num) {
                    cols.entry(name.into()).or_default().push((s, v));
                }
            }
            last_step = s;
        }
    }
    Ok((cols, fams))
}

/// Writes report.md, report.json, report.csv and plots/*.png into `out`; returns the PNGs.
pub fn write(rows: &[Row], out: &Path, title: &str) -> Result<Vec<String>> {
    let plots_dir = out.join("plots");
    std::fs::create_dir_all(&plots_dir).map_err(|e| Error::io(&plots_dir, e))?;
    let mut pngs = sweep_plots(rows, &plots_dir)?;
    let mine = per_row_plots(rows, out)?;
    pngs.extend(mine.iter().flat_map(|(_, m)| m.iter().cloned()));
    let per_row: BTreeMap<String, Vec<String>> = mine.into_iter().collect();
    let table = Table::new(rows);
    write_file(out, REPORT_MD, markdown(title, &table, &pngs, &per_row))?;
    write_file(
        out,
        REPORT_JSON,
        serde_json::to_string_pretty(&json!({"title": title, "rows": rows, "plots": pngs}))
            .map_err(|e| Error::Invalid(e.to_string()))?,
    )?;
    write_file(out, REPORT_CSV, table.csv())?;
    Ok(pngs)
}

fn write_file(out: &Path, name: &str, text: String) -> Result<()> {
    let p = out.join(name);
    std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
}

/// Per pruning method, the points (removed %, `f(row)`) of its rows, by sparsity; methods
/// without any point are left out.
fn series(rows: &[Row], methods: &BTreeSet<&str>, f: &dyn Fn(&Row) -> Option<f64>) -> Vec<Series> {
    methods
        .iter()
        .map(|m| {
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.method == *m)
                .filter_map(|r| Some((removed_pct(r)?, f(r)?)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (m.to_string(), pts)
        })
        .filter(|s| !s.1.is_empty())
        .collect()
}

/// The plots over the whole sweep (quality, then speed-up, vs sparsity), written into
/// `plots_dir`; returns their paths relative to the report.
fn sweep_plots(rows: &[Row], plots_dir: &Path) -> Result<Vec<String>> {
    let mut pngs = vec![];
    let methods: BTreeSet<&str> = rows
        .iter()
        .filter(|r| !r.is_dense())
        .map(|r| r.method.as_str())
        .collect();
    // Quality vs sparsity.
    let ppl = series(rows, &methods, &|r| r.eval.get("perplexity").copied());
    if !ppl.is_empty() {
        let p = plots_dir.join("quality_vs_sparsity.png");
        let dense = rows.iter().find(|r| r.is_dense());
        plots::quality_vs_sparsity(
            &p,
            &ppl,
            dense.and_then(|d| d.eval.get("perplexity").copied()),
            "perplexity",
        )?;
        pngs.push("plots/quality_vs_sparsity.png".to_string());
    }
    if let Some((trained, flat)) = token_series(rows) {
        let p = plots_dir.join("perplexity_vs_tokens.png");
        let dense = rows.iter().find(|r| r.is_dense());
        plots::quality_vs_tokens(
            &p,
            &trained,
            &flat,
            dense.and_then(|d| d.eval.get("perplexity").copied()),
            "perplexity",
        )?;
        pngs.push("plots/perplexity_vs_tokens.png".to_string());
    }
    let panels = speedup_panels(rows, &methods);
    if !panels.is_empty() {
        let p = plots_dir.join("speedup_vs_sparsity.png");
        plots::speedup_vs_sparsity(&p, &panels)?;
        pngs.push("plots/speedup_vs_sparsity.png".to_string());
    }
    Ok(pngs)
}

/// The lines of perplexity against tokens: the trained ones, and the flat (name, value) ones.
type TokenSeries = (Vec<ErrSeries>, Vec<(String, f64)>);

/// Perplexity against tokens trained: per trained method and target, its rows' (tokens,
/// perplexity, SE) in token order; per pruned row that did not train, its label and perplexity.
/// `None` when no trained row recorded both.
fn token_series(rows: &[Row]) -> Option<TokenSeries> {
    let ppl = |r: &Row| r.eval.get("perplexity").copied();
    let mut lines: BTreeMap<(String, u64), ErrSeries> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.train_dir.is_some()) {
        let (Some(x), Some(y)) = (r.tokens_trained.filter(|x| *x > 0.0), ppl(r)) else {
            continue;
        };
        let t = r.target.unwrap_or(0.0);
        let name = format!("{} @ {t}", r.method);
        let se = r.eval.get("perplexity_stderr").copied();
        lines
            .entry((r.method.clone(), t.to_bits()))
            .or_insert((name, vec![]))
            .1
            .push((x, y, se));
    }
    if lines.is_empty() {
        return None;
    }
    let mut trained: Vec<ErrSeries> = lines.into_values().collect();
    for s in &mut trained {
        s.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let flat = rows
        .iter()
        .filter(|r| !r.is_dense() && r.train_dir.is_none())
        .filter_map(|r| Some((format!("{} (no training)", r.label), ppl(r)?)))
        .collect();
    Some((trained, flat))
}

/// Speed-up vs sparsity panels: batch 1, decode and the first prompt length (each measured
/// series beside the ideal one), those with any measurement.
fn speedup_panels(rows: &[Row], methods: &BTreeSet<&str>) -> Vec<Panel> {
    let first_prefill = rows
        .iter()
        .filter_map(|r| r.bench.as_ref())
        .flat_map(|b| b.keys())
        .find(|k| k.starts_with("speedup.prefill.b1."))
        .cloned();
    let mut panels = vec![];
    for (key, ideal_key, what) in [
        (
            Some("speedup.decode.b1".to_string()),
            Some("ideal.decode".to_string()),
            "decode, batch 1".to_string(),
        ),
        (
            first_prefill.clone(),
            first_prefill
                .as_ref()
                .map(|k| format!("ideal.prefill.{}", k.rsplit('.').next().unwrap_or_default())),
            format!(
                "prefill, batch 1, prompt {}",
                first_prefill
                    .as_deref()
                    .unwrap_or_default()
                    .rsplit(".p")
                    .next()
                    .unwrap_or_default()
            ),
        ),
    ] {
        let (Some(key), Some(ik)) = (key, ideal_key) else {
            continue;
        };
        let measured = series(rows, methods, &|r| r.bench.as_ref()?.get(&key).copied());
        if measured.is_empty() {
            continue;
        }
        // The ideal depends only on the shapes: one line over every method's points.
        let mut ideal: Vec<(f64, f64)> =
            series(rows, methods, &|r| r.bench.as_ref()?.get(&ik).copied())
                .into_iter()
                .flat_map(|s| s.1)
                .chain([(0.0, 1.0)])
                .collect();
        ideal.sort_by(|a, b| a.0.total_cmp(&b.0));
        ideal.dedup_by(|a, b| (a.0 - b.0).abs() < 1e-9);
        panels.push((what, measured, ideal));
    }
    panels
}

/// Training curves and kept-unit maps, per pruned model in row order: (label, its PNGs
/// relative to `out`).
fn per_row_plots(rows: &[Row], out: &Path) -> Result<Vec<(String, Vec<String>)>> {
    let mut per_row = vec![];
    for r in rows.iter().filter(|r| !r.is_dense()) {
        let mut mine = vec![];
        if let Some(d) = &r.train_dir {
            mine.extend(training_plot(r, &d.join(TRAIN_LOG), out)?);
        }
        if let Some(d) = &r.mask_dir {
            mine.extend(kept_plot(r, &d.join(MASK), out)?);
        }
        per_row.push((r.label.clone(), mine));
    }
    Ok(per_row)
}

/// Plots the training log at `log`, if there is one.
fn training_plot(r: &Row, log: &Path, out: &Path) -> Result<Option<String>> {
    if !log.is_file() {
        return Ok(None);
    }
    let (cols, fams) = read_log(log)?;
    let name = format!("plots/training_{}.png", slug(&r.label));
    plots::training_curves(&out.join(&name), &r.label, &cols, &fams, r.target)?;
    Ok(Some(name))
}

/// Plots the kept heads and channels of the final mask at `path`, if it can be read.
fn kept_plot(r: &Row, path: &Path, out: &Path) -> Result<Option<String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let m: FinalMask = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(path, format!("not a mask: {e}")))?;
    let heads: Vec<Vec<bool>> = m
        .layers
        .iter()
        .map(|l| l.heads.iter().map(|&v| v != 0.0).collect())
        .collect();
    // MoE layers: the shared expert's channels, then every routed expert's.
    let chans: Vec<Vec<bool>> = m
        .layers
        .iter()
        .map(|l| {
            l.channels
                .iter()
                .chain(&l.experts)
                .map(|&v| v != 0.0)
                .collect()
        })
        .collect();
    let what = if m.layers.iter().any(|l| !l.experts.is_empty()) {
        "FFN / expert channel"
    } else {
        "FFN channel"
    };
    let name = format!("plots/kept_{}.png", slug(&r.label));
    plots::kept_map(&out.join(&name), &r.label, &heads, &chans, what)?;
    Ok(Some(name))
}

/// The report's table: one row of formatted cells per evaluated model.
struct Table {
    header: Vec<String>,
    cells: Vec<Vec<String>>,
    /// Whether some speed-up is flagged as uncertain (its repeats spread too widely).
    unsure: bool,
    /// Whether some row recorded its tokens trained (the column is shown).
    trained: bool,
}

impl Table {
    fn new(rows: &[Row]) -> Table {
        let acc_keys: BTreeSet<String> = rows
            .iter()
            .flat_map(|r| r.eval.keys())
            .filter(|k| {
                (k.ends_with("_acc") || k.ends_with("_acc_norm")) && !k.starts_with("delta.")
            })
            .cloned()
            .collect();
        let speed_keys: BTreeSet<String> = rows
            .iter()
            .filter_map(|r| r.bench.as_ref())
            .flat_map(|b| b.keys())
            .filter(|k| k.starts_with("speedup.") || k.starts_with("ideal."))
            .cloned()
            .collect();
        let dense_ppl = rows
            .iter()
            .find(|r| r.is_dense())
            .and_then(|d| d.eval.get("perplexity").copied());
        let trained = rows.iter().any(|r| r.tokens_trained.is_some());
        let mut header = vec![
            "model".to_string(),
            "method".into(),
            "target".into(),
            "params".into(),
            "removed %".into(),
        ];
        if trained {
            header.push("tokens trained".into());
        }
        header.extend(["perplexity".into(), "Δ ppl".into()]);
        header.extend(acc_keys.iter().cloned());
        header.extend(speed_keys.iter().cloned());
        let mut table = Table {
            header,
            cells: vec![],
            unsure: false,
            trained,
        };
        for r in rows {
            let row = table.row(r, dense_ppl, &acc_keys, &speed_keys);
            table.cells.push(row);
        }
        table
    }

    /// The cells of `r`, noting in `unsure` a speed-up whose repeats spread too widely.
    fn row(
        &mut self,
        r: &Row,
        dense_ppl: Option<f64>,
        acc_keys: &BTreeSet<String>,
        speed_keys: &BTreeSet<String>,
    ) -> Vec<String> {
        let g = |k: &str| r.eval.get(k).copied();
        let mut cells = vec![
            r.label.clone(),
            r.method.clone(),
            r.target.map_or("—".into(), |t| format!("{t}")),
            g("params_total").map_or("—".into(), |p| format!("{:.2}M", p / 1e6)),
            removed_pct(r).map_or("—".into(), |p| format!("{p:.1}")),
        ];
        if self.trained {
            cells.push(r.tokens_trained.map_or("—".into(), |t| format!("{t:.0}")));
        }
        cells.push(match (g("perplexity"), g("perplexity_stderr")) {
            (Some(p), Some(se)) => format!("{p:.3} ± {se:.3}"),
            (Some(p), None) => format!("{p:.3}"),
            _ => "—".into(),
        });
        cells.push(match (g("perplexity"), dense_ppl) {
            (Some(p), Some(d)) if !r.is_dense() => {
                format!("{:+.3} ({:+.1} %)", p - d, (p / d - 1.0) * 100.0)
            }
            _ => "—".into(),
        });
        for k in acc_keys {
            cells.push(match (g(k), g(&format!("{k}_stderr"))) {
                (Some(v), Some(se)) => format!("{v:.3} ± {se:.3}"),
                (Some(v), None) => format!("{v:.3}"),
                _ => "—".into(),
            });
        }
        for k in speed_keys {
            let b = r.bench.as_ref();
            let spread = k
                .strip_prefix("speedup.")
                .and_then(|rest| b?.get(&format!("uncertainty.{rest}")));
            cells.push(match (b.and_then(|b| b.get(k)), spread) {
                (Some(v), Some(&u)) if u > crate::bench::SPREAD_LIMIT => {
                    self.unsure = true;
                    format!("{v:.2}x ±{:.0} % (!)", 100.0 * u)
                }
                (Some(v), _) => format!("{v:.2}x"),
                (None, _) => "—".into(),
            });
        }
        cells
    }

    /// The table as CSV (cells quoted when they hold `,` or `"`).
    fn csv(&self) -> String {
        let csv_cell = |s: &str| {
            if s.contains(',') || s.contains('"') {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut csv = self
            .header
            .iter()
            .map(|h| csv_cell(h))
            .collect::<Vec<_>>()
            .join(",")
            + "\n";
        for c in &self.cells {
            csv += &(c.iter().map(|x| csv_cell(x)).collect::<Vec<_>>().join(",") + "\n");
        }
        csv
    }
}

/// report.md: the heading, the table, the sweep plots (`pngs` other than the per-row ones),
/// then a section per model with its own plots.
fn markdown(
    title: &str,
    table: &Table,
    pngs: &[String],
    per_row: &BTreeMap<String, Vec<String>>,
) -> String {
    let mut md = format!("# Report: {title}\n\n");
    md += &format!(
        "One row per evaluated model (the dense model first). `removed %`: parameters removed, of the dense model's total. {}Perplexity ± its standard error over the scored windows (the independent units; delta method), `Δ ppl`: against dense. Accuracies ± their standard error. `speedup.*`: measured throughput over dense in the same run (median of alternating runs); `ideal.*`: dense / pruned FLOPs per token.\n\n",
        if table.trained {
            "`tokens trained`: tokens of the training run's steps. "
        } else {
            ""
        }
    );
    md += &format!(
        "| {} |\n|{}|\n",
        table.header.join(" | "),
        table
            .header
            .iter()
            .map(|_| "---")
            .collect::<Vec<_>>()
            .join("|")
    );
    for c in &table.cells {
        md += &format!("| {} |\n", c.join(" | "));
    }
    if table.unsure {
        md += "\n(!) The benchmark's repeats spread so widely that this speed-up is uncertain by the ± shown: rerun the benchmark stage (`--force benchmark`) on a quiet machine, or with more repeats, before reading it.\n";
    }
    md += "\n## Plots\n\n";
    for p in pngs
        .iter()
        .filter(|p| !p.contains("training_") && !p.contains("kept_"))
    {
        md += &format!("![{p}]({p})\n\n");
    }
    for (label, mine) in per_row {
        if !mine.is_empty() {
            md += &format!("### {label}\n\n");
            for p in mine {
                md += &format!("![{p}]({p})\n\n");
            }
        }
    }
    md
}
