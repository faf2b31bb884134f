//! Progress on a terminal (bars hidden when stderr is not one, so logs stay clean): loading,
//! benchmark rounds, scored sequences, and the stages of a recipe run.

use std::io::IsTerminal;

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
/// the engine's log lines.
pub struct Stages {
    multi: MultiProgress,
    tty: bool,
}

impl Stages {
    /// Bars if stderr is a terminal.
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
        }
    }
}

impl Observer for Stages {
    fn bar(&self, instance: &str) -> ProgressBar {
        if !self.tty {
            return ProgressBar::hidden();
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
