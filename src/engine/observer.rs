//! What a run tells the outside: an [`Observer`] hears each instance start and finish and gets
//! the warnings; it hands each running stage the progress bar the stage advances. The engine
//! prints nothing itself; the command line renders bars on a terminal, [`LogLines`] writes a
//! line per event (logs, tests).

use indicatif::ProgressBar;

use super::Done;

/// Hears a run's events; called from the stage threads, hence `Sync`.
pub trait Observer: Sync {
    /// The progress bar for a stage instance about to run (hidden when nothing is drawn).
    fn bar(&self, instance: &str) -> ProgressBar {
        let _ = instance;
        ProgressBar::hidden()
    }
    /// An instance starts its work (its key lock is held and it was not found done).
    fn running(&self, instance: &str, key: &str);
    /// An instance finished, failed or was reused; `bar` is the one [`Observer::bar`] gave it.
    fn finished(&self, done: &Done, bar: &ProgressBar);
    /// Something the user should know that does not stop the run.
    fn warn(&self, message: &str) {
        eprintln!("warning: {message}");
    }
    /// A running stage tells what it is doing (e.g. that it resumes from a checkpoint).
    fn note(&self, instance: &str, message: &str) {
        eprintln!("[ddp] note  {instance}: {message}");
    }
}

/// A line on stderr per start and end, `[ddp] run   NAME (KEY)` / `[ddp] done  NAME: ran in 1.2s`.
pub struct LogLines;

impl Observer for LogLines {
    fn running(&self, instance: &str, key: &str) {
        eprintln!("[ddp] run   {instance} ({})", &key[..12.min(key.len())]);
    }
    fn finished(&self, done: &Done, _bar: &ProgressBar) {
        eprintln!(
            "[ddp] done  {}: {} in {:.1}s",
            done.name,
            done.outcome_word(),
            done.seconds
        );
    }
}
