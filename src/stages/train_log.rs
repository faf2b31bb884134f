//! anneal-train's `train_log.csv`: one row per step and family, written a step at a time (a
//! kill tears at most the last row), read back to trim it to a checkpoint and to recover the
//! last step's figures. With a joint budget (gate-insert's `split = "learned"`) every row ends
//! with the step's expected removed-parameter fraction and the joint multipliers
//! ([`JOINT_COLUMNS`]).

use anyhow::{Context, Result};

use crate::prune::train;

/// The columns of train_log.csv.
pub(super) const LOG_HEADER: &str = "step,loss,ce,kl,mu,lr_z,family,expected_sparsity,lambda1,lambda2,lambda3,binarity,seconds,tokens";

/// The columns a joint budget appends to [`LOG_HEADER`].
pub(super) const JOINT_COLUMNS: &str = "params_sparsity,joint_lambda1,joint_lambda2";

/// The header of a run's train_log.csv: with a joint budget (`joint`), [`JOINT_COLUMNS`]
/// appended.
pub(super) fn log_header(joint: bool) -> String {
    match joint {
        true => format!("{LOG_HEADER},{JOINT_COLUMNS}"),
        false => LOG_HEADER.to_string(),
    }
}

/// One step's rows of train_log.csv, one per family. An f64 printed with `{}` reads back to the
/// same value, so the log keeps the step's exact figures ([`TrainLog::last_step`]).
pub(super) fn log_rows(l: &train::StepLog) -> String {
    let mut rows = String::new();
    let joint = match l.joint {
        Some((q, l1, l2)) => format!(",{q},{l1},{l2}"),
        None => String::new(),
    };
    for (name, q, l1, l2, l3, bin) in &l.families {
        rows += &format!(
            "{},{},{},{},{},{},{name},{q},{l1},{l2},{l3},{bin},{:.4},{}{joint}\n",
            l.step,
            l.loss,
            l.ce,
            l.kl,
            l.mu,
            l.lr_z,
            l.time.total(),
            l.tokens
        );
    }
    rows
}

/// One complete row of train_log.csv.
struct LogRow {
    /// The row as written, newline included.
    text: String,
    /// Its step's figures, with this row's family only.
    log: train::StepLog,
    /// Wall seconds of its step.
    seconds: f64,
}

/// The complete rows of a train_log.csv (a row torn by a kill is left out).
pub(super) struct TrainLog(Vec<LogRow>);

/// Reads train_log.csv's complete rows (none when it does not exist).
pub(super) fn read_log(path: &std::path::Path) -> Result<TrainLog> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let rows = text
        .split_inclusive('\n')
        .skip(1)
        .filter(|l| l.ends_with('\n'))
        .filter_map(parse_row)
        .collect();
    Ok(TrainLog(rows))
}

/// A row of train_log.csv ([`log_rows`]), or None when it is not one.
fn parse_row(line: &str) -> Option<LogRow> {
    let f: Vec<&str> = line.trim_end().split(',').collect();
    let plain = LOG_HEADER.split(',').count();
    if f.len() != plain && f.len() != plain + JOINT_COLUMNS.split(',').count() {
        return None;
    }
    let num = |i: usize| f[i].parse::<f64>().ok();
    let joint = match f.len() > plain {
        true => Some((num(plain)?, num(plain + 1)?, num(plain + 2)?)),
        false => None,
    };
    let fam = (
        f[6].to_string(),
        num(7)?,
        num(8)?,
        num(9)?,
        num(10)?,
        num(11)?,
    );
    let log = train::StepLog {
        step: f[0].parse().ok()?,
        loss: num(1)?,
        ce: num(2)?,
        kl: num(3)?,
        mu: num(4)?,
        lr_z: num(5)?,
        families: vec![fam],
        joint,
        tokens: f[13].parse().ok()?,
        time: Default::default(),
    };
    Some(LogRow {
        text: line.to_string(),
        log,
        seconds: num(12)?,
    })
}

impl TrainLog {
    /// The log of steps `1..=step` (header included), `families` rows each, with the joint
    /// budget's columns or without (`joint`); None when the rows do not cover exactly those
    /// steps, so.
    pub(super) fn up_to(&self, step: usize, families: usize, joint: bool) -> Option<String> {
        let rows: Vec<&LogRow> = self.0.iter().filter(|r| r.log.step <= step).collect();
        let expected = (1..=step).flat_map(|s| std::iter::repeat_n(s, families));
        if !rows.iter().map(|r| r.log.step).eq(expected)
            || rows.iter().any(|r| r.log.joint.is_some() != joint)
        {
            return None;
        }
        let text: String = rows.iter().map(|r| r.text.as_str()).collect();
        Some(format!("{}\n{text}", log_header(joint)))
    }

    /// The last step's figures, every family's, and the throughput over the whole log.
    pub(super) fn last_step(&self) -> Option<(train::StepLog, f64)> {
        let last = self.0.last()?.log.step;
        let mut rows = self.0.iter().filter(|r| r.log.step == last);
        let mut log = rows.next()?.log.clone();
        log.families
            .extend(rows.flat_map(|r| r.log.families.clone()));
        // A step has a row per family: sum one family's rows.
        let first = &self.0[0].log.families[0].0;
        let steps = self.0.iter().filter(|r| &r.log.families[0].0 == first);
        let (seconds, tokens) = steps.fold((0.0, 0), |(s, t), r| (s + r.seconds, t + r.log.tokens));
        Some((log, tokens as f64 / f64::max(seconds, 1e-9)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: usize, joint: Option<(f64, f64, f64)>) -> train::StepLog {
        train::StepLog {
            step,
            loss: 1.5,
            ce: 1.0,
            kl: 0.25,
            mu: 0.5,
            lr_z: 0.1,
            families: vec![
                ("heads".into(), 0.1, 0.0, 0.0, 0.3, 0.2),
                ("channels".into(), 0.2, 0.0, 0.0, 0.4, 0.1),
            ],
            joint,
            tokens: 64,
            time: Default::default(),
        }
    }

    #[test]
    fn a_joint_budgets_columns_read_back_and_trim_to_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_log.csv");
        let rows: String = (1..=3)
            .map(|s| log_rows(&step(s, Some((0.3 + s as f64, -1.0, 2.5)))))
            .collect();
        std::fs::write(&path, format!("{}\n{rows}", log_header(true))).unwrap();
        let log = read_log(&path).unwrap();
        let (last, _) = log.last_step().unwrap();
        assert_eq!((last.step, last.joint), (3, Some((3.3, -1.0, 2.5))));
        assert_eq!(last.families.len(), 2);
        let trimmed = log.up_to(2, 2, true).unwrap();
        assert!(trimmed.starts_with(&log_header(true)));
        assert_eq!(trimmed.lines().count(), 1 + 2 * 2);
        // A checkpoint without a joint budget does not take these rows.
        assert_eq!(log.up_to(2, 2, false), None);
        // Without a joint budget the rows are as before.
        assert_eq!(
            log_rows(&step(1, None))
                .lines()
                .next()
                .unwrap()
                .split(',')
                .count(),
            14
        );
    }
}
