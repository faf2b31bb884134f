//! Which cache entries a `gc` removes: those the given lock files do not reference, those older
//! than a number of days, then the oldest until the cache fits a size. Deciding only; the
//! caller removes (or, in a dry run, reports).

use std::collections::BTreeSet;

use super::cache::{Cache, Manifest};

/// What to keep. Every rule that is set removes; an entry goes when any rule says so.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Keys referenced by the recipes' lock files; `None` removes nothing for this reason.
    pub keep: Option<BTreeSet<String>>,
    /// Remove entries started more than this many days ago.
    pub older_than_days: Option<f64>,
    /// Then remove the oldest remaining entries until the total is at most this many bytes.
    pub max_bytes: Option<u64>,
}

/// Days since `unix` (seconds), 0 for a time in the future.
pub fn age_days(unix: u64) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now.saturating_sub(unix) as f64 / 86400.0
}

/// The entries `policy` removes, each with its size in bytes, in the order they were chosen.
pub fn select(cache: &Cache, policy: &Policy) -> Vec<(Manifest, u64)> {
    let size = |m: &Manifest| Cache::size_of(&cache.entry_dir(&m.kind, &m.key));
    let mut entries = cache.entries();
    entries.sort_by_key(|m| m.started_unix);
    let (doomed, kept): (Vec<Manifest>, Vec<Manifest>) = entries.into_iter().partition(|m| {
        let unreferenced = policy.keep.as_ref().is_some_and(|k| !k.contains(&m.key));
        let old = policy
            .older_than_days
            .is_some_and(|d| age_days(m.started_unix) > d);
        unreferenced || old
    });
    let sized = |v: Vec<Manifest>| -> Vec<(Manifest, u64)> {
        v.into_iter()
            .map(|m| {
                let s = size(&m);
                (m, s)
            })
            .collect()
    };
    let mut out = sized(doomed);
    if let Some(budget) = policy.max_bytes {
        let kept = sized(kept);
        let mut total: u64 = kept.iter().map(|x| x.1).sum();
        for (m, s) in kept {
            if total <= budget {
                break;
            }
            total -= s;
            out.push((m, s));
        }
    }
    out
}
