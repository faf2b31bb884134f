//! Scheduling: instances whose inputs are done run on up to `jobs` threads; an instance whose
//! input failed never runs; after a failure nothing new starts unless `keep_going`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;

use super::cache::Cache;
use super::execute::{execute, not_run};
use super::observer::Observer;
use super::plan::Planned;
use super::registry::Registry;
use super::stage::Input;
use super::{Done, Options, Outcome};

/// Everything a scheduled instance needs, shared by the threads.
pub(crate) struct Ctx<'a> {
    pub registry: &'a Registry,
    pub cache: &'a Cache,
    pub opts: &'a Options,
    pub obs: &'a dyn Observer,
    pub by_name: BTreeMap<&'a str, &'a Planned>,
}

/// Removes from `pending` the instances an unfinished input blocks forever.
fn drop_blocked(pending: &mut Vec<&Planned>, results: &mut BTreeMap<String, Done>) {
    pending.retain(|p| {
        let bad = p.instance.inputs.values().find(|u| {
            results
                .get(*u)
                .is_some_and(|d| matches!(d.outcome, Outcome::Failed(_) | Outcome::NotRun(_)))
        });
        let Some(u) = bad else { return true };
        let why = format!("input {u} did not complete");
        results.insert(p.instance.name.clone(), not_run(p, &why));
        false
    });
}

/// The inputs of `p` as the stage sees them: each upstream entry's directory and metrics.
fn inputs_of(p: &Planned, results: &BTreeMap<String, Done>, c: &Ctx) -> BTreeMap<String, Input> {
    p.instance
        .inputs
        .iter()
        .map(|(n, up)| {
            let d = &results[up];
            let kind = c.by_name[up.as_str()].instance.kind.clone();
            let input = Input {
                stage: up.clone(),
                dir: c.cache.entry_dir(&kind, &d.key),
                kind,
                key: d.key.clone(),
                metrics: d.metrics.clone(),
            };
            (n.clone(), input)
        })
        .collect()
}

/// Runs `pending` to completion (or until a failure stops it), recording every outcome.
pub(crate) fn run_pending<'a>(
    mut pending: Vec<&'a Planned>,
    results: &mut BTreeMap<String, Done>,
    c: &Ctx<'a>,
) {
    let jobs = c.opts.jobs.max(1);
    let (tx, rx) = mpsc::channel::<Done>();
    let mut running: BTreeSet<String> = BTreeSet::new();
    let mut stop = false;
    std::thread::scope(|scope| loop {
        drop_blocked(&mut pending, results);
        while !stop && running.len() < jobs {
            let ready = pending.iter().position(|p| {
                let up = |u: &String| results.get(u).is_some_and(Done::completed);
                p.instance.inputs.values().all(up)
            });
            let Some(at) = ready else { break };
            let p = pending.remove(at);
            running.insert(p.instance.name.clone());
            let inputs = inputs_of(p, results, c);
            let bar = c.obs.bar(&p.instance.name);
            let tx = tx.clone();
            let (registry, cache, obs) = (c.registry, c.cache, c.obs);
            scope.spawn(move || {
                let done = execute(p, registry, cache, inputs, &bar, obs);
                obs.finished(&done, &bar);
                let _ = tx.send(done);
            });
        }
        if running.is_empty() {
            break;
        }
        let done = rx.recv().expect("a running stage reports");
        running.remove(&done.name);
        if matches!(done.outcome, Outcome::Failed(_)) && !c.opts.keep_going {
            stop = true;
        }
        results.insert(done.name.clone(), done);
    });
    for p in pending {
        results
            .entry(p.instance.name.clone())
            .or_insert_with(|| not_run(p, "stopped after a failure"));
    }
}
