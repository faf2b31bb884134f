//! Progress on a terminal (bars hidden when stderr is not one, so logs stay clean): loading,
//! benchmark rounds, scored sequences, and the stages of a recipe run. In a log, a recipe run's
//! stages instead write a line now and then (see [`LogTicker`]).

use std::io::IsTerminal;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use ddp::engine::{Done, LogLines, Observer};
use ddp::io::ModelFiles;
use ddp::model::load;

/// A bar with `template` on a terminal, hidden otherwise or when `show` is false.
fn bar(len: u64, show: bool, template: &str) -> ProgressBar {
    let bar = if show && std::io::stderr().is_terminal() {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(style(template));
    bar
}

/// The house style with `template`.
fn style(template: &str) -> ProgressStyle {
    // The templates are constants of this file, so a parse failure is a bug caught by any run.
    ProgressStyle::with_template(template)
        .expect("valid progress template")
        .progress_chars("=> ")
}

/// A bar of benchmark runs or rounds.
pub fn rounds(what: &str) -> ProgressBar {
    bar(
        0,
        true,
        &format!("{what} {{pos}}/{{len}} [{{bar:30}}] eta {{eta}}"),
    )
}

/// A bar of tensors loaded, shown for models of more than 50 tensors.
pub fn loading(files: &ModelFiles) -> ProgressBar {
    let n = load::tensor_count(files.weights.as_ref());
    bar(
        n,
        n > 50,
        "loading {pos}/{len} tensors [{bar:30}] {per_sec} eta {eta}",
    )
}

/// A bar of scored sequences, its message the task being scored.
pub fn sequences() -> ProgressBar {
    bar(
        0,
        true,
        "{msg:>10} {pos}/{len} sequences [{bar:30}] {per_sec} eta {eta}",
    )
}

/// How a recipe run shows its stages: a bar per running stage on a terminal, else
/// the engine's log lines and, every so often, a progress line per running stage.
pub struct Stages {
    multi: MultiProgress,
    tty: bool,
    /// Off a terminal: the thread writing progress lines (`None` when they are turned off).
    log: Option<LogTicker>,
}

impl Stages {
    /// Bars if stderr is a terminal, else log lines.
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let target = if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            tty,
            log: if tty { None } else { LogTicker::start() },
        }
    }
}

impl Observer for Stages {
    fn bar(&self, instance: &str) -> ProgressBar {
        if !self.tty {
            // Undrawn, but counting: the ticker reads its position, rate and message.
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
            if let Some(log) = &self.log {
                log.watch(instance, &bar);
            }
            return bar;
        }
        let bar = self.multi.add(ProgressBar::new(0));
        bar.set_style(style(
            "{spinner} {prefix:<40} [{bar:25}] {pos}/{len} {per_sec} eta {eta} {msg}",
        ));
        bar.set_prefix(instance.to_string());
        bar
    }
    fn running(&self, instance: &str, key: &str) {
        if !self.tty {
            LogLines.running(instance, key);
        }
    }
    fn finished(&self, done: &Done, bar: &ProgressBar) {
        bar.finish_and_clear();
        if let Some(log) = &self.log {
            log.forget(&done.name);
        }
        if !self.tty {
            LogLines.finished(done, bar);
        }
    }
    fn warn(&self, message: &str) {
        self.multi.suspend(|| eprintln!("warning: {message}"));
    }
    fn note(&self, instance: &str, message: &str) {
        self.multi
            .suspend(|| eprintln!("[ddp] note  {instance}: {message}"));
    }
}

/// The environment variable that sets how often (seconds) a log gets progress lines; 0 turns
/// them off.
pub const PROGRESS_EVERY: &str = "DDP_PROGRESS_EVERY";

/// Running stages' bars, by instance.
type Watched = Arc<Mutex<Vec<(String, ProgressBar)>>>;

/// Off a terminal, a thread that writes a line per running stage every
/// [`PROGRESS_EVERY`] seconds (default 30), so a long stage is not silent in a log:
/// `[ddp] prog  calibrate: 1200/3000 (40%), 12.3/s, ETA 2m26s`.
pub struct LogTicker {
    bars: Watched,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LogTicker {
    /// Starts the thread; `None` when [`PROGRESS_EVERY`] is 0.
    fn start() -> Option<Self> {
        let every = match std::env::var(PROGRESS_EVERY) {
            Err(_) => 30.0,
            Ok(v) => match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => s,
                _ => {
                    eprintln!("warning: {PROGRESS_EVERY}={v} is not a number of seconds; using 30");
                    30.0
                }
            },
        };
        if every == 0.0 {
            return None;
        }
        let bars: Watched = Arc::default();
        let (stop, rx) = mpsc::channel::<()>();
        let watched = bars.clone();
        let period = Duration::from_secs_f64(every);
        let thread = std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(period) {
                let bars = watched.lock().unwrap_or_else(|e| e.into_inner());
                for (name, bar) in bars.iter().filter(|(_, b)| !b.is_finished()) {
                    eprintln!("{}", progress_line(name, bar));
                }
            }
        });
        Some(Self {
            bars,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn watch(&self, instance: &str, bar: &ProgressBar) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        bars.push((instance.to_string(), bar.clone()));
    }

    fn forget(&self, instance: &str) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        bars.retain(|(n, _)| n != instance);
    }
}

impl Drop for LogTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `[ddp] prog  NAME: POS/LEN (P%), RATE/s, ETA T (MESSAGE)`; before the stage reports any
/// work (loading a model, a stage without a bar), `[ddp] prog  NAME: running for T`.
fn progress_line(name: &str, bar: &ProgressBar) -> String {
    let (pos, len) = (bar.position(), bar.length().unwrap_or(0));
    if pos == 0 && len == 0 {
        let t = duration_text(bar.elapsed().as_secs_f64());
        return format!("[ddp] prog  {name}: running for {t}");
    }
    let rate = bar.per_sec();
    let mut line = format!("[ddp] prog  {name}: ");
    if len > 0 {
        let pct = 100.0 * pos as f64 / len as f64;
        line += &format!("{pos}/{len} ({pct:.0}%), {}/s", rate_text(rate));
        if rate > 0.0 && pos < len {
            let eta = (len - pos) as f64 / rate;
            line += &format!(", ETA {}", duration_text(eta));
        }
    } else {
        line += &format!("{pos}, {}/s", rate_text(rate));
    }
    let msg = bar.message();
    if !msg.is_empty() {
        line += &format!(" ({msg})");
    }
    line
}

/// A rate with about three significant digits.
fn rate_text(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 1.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.3}")
    }
}

/// Seconds as `1h02m`, `2m26s` or `14s`.
fn duration_text(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_tells_position_share_rate_and_eta() {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        let idle = progress_line("slice", &bar);
        assert!(
            idle.starts_with("[ddp] prog  slice: running for "),
            "{idle}"
        );
        bar.set_length(3000);
        bar.set_position(1200);
        bar.set_message("loss 3.210");
        let line = progress_line("calibrate", &bar);
        assert!(
            line.starts_with("[ddp] prog  calibrate: 1200/3000 (40%), ")
                && line.contains("/s")
                && line.ends_with(" (loss 3.210)"),
            "{line}"
        );
        assert_eq!(duration_text(146.0), "2m26s");
        assert_eq!(duration_text(14.2), "14s");
        assert_eq!(duration_text(3720.0), "1h02m");
        assert_eq!(rate_text(12.34), "12.3");
        assert_eq!(rate_text(0.05), "0.050");
    }
}
