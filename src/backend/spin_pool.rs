//! Helper threads that stay awake between small parallel jobs: decoding's matrix-vector
//! products and its attention over one query row.
//!
//! Decoding one token runs ~250 parallel jobs of 20-200 µs each, with a little serial work in
//! between. rayon's idle workers go to sleep after a few dozen yields and take tens of
//! microseconds to wake, so the main thread did most of each job alone (decode at 128 tokens
//! of context: 22 -> 26 tok/s, `ddp-run bench` with the binaries before and after). Here
//! the helpers spin on one atomic word for [`SPIN`] after their last task, then park (ggml's
//! thread pool does the same). GEMMs and training stay on rayon.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a helper spins after its last task before it parks.
const SPIN: Duration = Duration::from_millis(2);
/// Tasks per job at most: the count and the next index share the job word with a generation.
const MAX_TASKS: usize = 0xffff;

/// Query rows up to which attention runs its heads here (decoding, short prompts' tail).
pub(crate) const SMALL_ROWS: usize = 16;
/// A job's task function; helpers see it only through [`JOB`] while its generation is current.
type Task<'a> = dyn Fn(usize) + Sync + 'a;

/// `generation << 32 | tasks << 16 | next index`. A task is claimed by one compare-exchange,
/// which fails once the job's generation is over, so no helper runs a task of a finished job.
static WORD: AtomicU64 = AtomicU64::new(0);
/// The current job (a pointer to the caller's `&Task`, on its stack).
static JOB: AtomicPtr<&'static Task<'static>> = AtomicPtr::new(std::ptr::null_mut());
/// Tasks of the current job that have returned.
static DONE: AtomicUsize = AtomicUsize::new(0);
/// Helpers parked or about to park; a new job wakes them.
static PARKED: AtomicUsize = AtomicUsize::new(0);
/// Whether a task of the current job panicked on a helper (the caller re-raises it).
static PANICKED: AtomicBool = AtomicBool::new(false);
/// One job at a time: a caller that finds the pool taken runs its tasks inline.
static BUSY: Mutex<()> = Mutex::new(());

thread_local! {
    /// Inside a helper: a task that calls [`map`] runs inline rather than wait on itself.
    static IN_HELPER: Cell<bool> = const { Cell::new(false) };
}

/// The helpers, started on first use: one fewer than rayon's threads (the caller is the other).
fn helpers() -> &'static [Thread] {
    static HELPERS: OnceLock<Vec<Thread>> = OnceLock::new();
    HELPERS.get_or_init(|| {
        (0..rayon::current_num_threads().saturating_sub(1))
            .filter_map(|i| {
                std::thread::Builder::new()
                    .name(format!("ddp-spin-{i}"))
                    .spawn(helper_loop)
                    .ok()
                    .map(|h| h.thread().clone())
            })
            .collect()
    })
}

/// `f(0), ..., f(n - 1)` on the caller and the helpers, results in order.
pub(crate) fn map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let slots: Vec<Mutex<Option<T>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let task = |i: usize| {
        let v = f(i);
        *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
    };
    run(n, &task);
    slots
        .into_iter()
        .map(|s| {
            s.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every task ran")
        })
        .collect()
}

fn run(n: usize, task: &Task<'_>) {
    let inline = || (0..n).for_each(task);
    if n <= 1 || n > MAX_TASKS || IN_HELPER.with(Cell::get) || helpers().is_empty() {
        return inline();
    }
    let _guard = match BUSY.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return inline(),
    };
    // SAFETY: helpers dereference JOB only after claiming a task of this generation, and this
    // function returns (or unwinds) only once every task of it has returned, so the borrow
    // outlives every use.
    let job: &'static Task<'static> = unsafe { std::mem::transmute(task) };
    let job_ref = &job;
    JOB.store(job_ref as *const _ as *mut _, Ordering::Relaxed);
    DONE.store(0, Ordering::Relaxed);
    PANICKED.store(false, Ordering::Relaxed);
    let generation = (WORD.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xffff_ffff;
    WORD.store(generation << 32 | (n as u64) << 16, Ordering::SeqCst);
    if PARKED.load(Ordering::SeqCst) > 0 {
        helpers().iter().for_each(Thread::unpark);
    }
    let mut caught = None;
    while let Some(i) = claim() {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| task(i))) {
            caught = Some(p);
        }
        DONE.fetch_add(1, Ordering::Release);
    }
    while DONE.load(Ordering::Acquire) < n {
        std::hint::spin_loop();
    }
    if let Some(p) = caught {
        resume_unwind(p);
    }
    assert!(
        !PANICKED.load(Ordering::Acquire),
        "a task panicked on a spin-pool helper"
    );
}

/// The next unclaimed task of the current job, if any.
fn claim() -> Option<usize> {
    let mut w = WORD.load(Ordering::Acquire);
    loop {
        let (tasks, next) = ((w >> 16) & 0xffff, w & 0xffff);
        if next >= tasks {
            return None;
        }
        match WORD.compare_exchange_weak(w, w + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(next as usize),
            Err(now) => w = now,
        }
    }
}

fn helper_loop() {
    IN_HELPER.with(|h| h.set(true));
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    loop {
        if let Some(i) = claim() {
            // SAFETY: the claim succeeded, so the job is current and its caller is waiting
            // for this task (see `run`).
            let task = unsafe { *JOB.load(Ordering::Acquire) };
            if catch_unwind(AssertUnwindSafe(|| task(i))).is_err() {
                PANICKED.store(true, Ordering::Release);
            }
            DONE.fetch_add(1, Ordering::Release);
            idle_since = Instant::now();
            continue;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(256) || idle_since.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        PARKED.fetch_add(1, Ordering::SeqCst);
        // A job published between the last claim and the increment is seen here; one
        // published after it unparks us (a stale unpark only makes `park` return early).
        if claim_pending() {
            PARKED.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        std::thread::park_timeout(Duration::from_millis(100));
        PARKED.fetch_sub(1, Ordering::AcqRel);
        idle_since = Instant::now();
    }
}

/// Whether the current job has tasks left, without claiming one.
fn claim_pending() -> bool {
    let w = WORD.load(Ordering::SeqCst);
    (w & 0xffff) < ((w >> 16) & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Every task runs exactly once and results come back in order, for job sizes around the
    /// thread count, from callers racing for the pool (the losers run inline) and from a task
    /// that itself maps.
    #[test]
    fn runs_every_task_once_in_order() {
        std::thread::scope(|s| {
            for t in 0..4u32 {
                s.spawn(move || {
                    for round in 0..200u32 {
                        let n = (round % 9) as usize;
                        let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                        let got = map(n, |i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                            let inner: u32 = map(2, |j| j as u32).iter().sum();
                            i as u32 * 10 + t + inner
                        });
                        let want: Vec<u32> = (0..n as u32).map(|i| i * 10 + t + 1).collect();
                        assert_eq!(got, want);
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }

    /// A panicking task reaches the caller, whichever thread ran it, and the pool still works.
    #[test]
    fn a_panicking_task_reaches_the_caller() {
        for bad in 0..4 {
            let r = catch_unwind(|| map(4, |i| assert_ne!(i, bad, "task {i} fails")));
            assert!(r.is_err(), "task {bad}'s panic was lost");
            assert_eq!(map(3, |i| i), vec![0, 1, 2]);
        }
    }
}
