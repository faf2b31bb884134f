#!/bin/sh
# lambda3's rate multiplied by DDP_L3 (0.1, 0): the slower-hardening rows of FINDINGS.md.
# The variable exists only in commit 4671fb2 (dropped in the next) and is not part of the cache
# key, so each factor gets its own cache, seeded with hard links to the shared stages' entries
# (load, gate-insert, calibrate, evaluate-dense) of the study cache and of this recipe's cache.
# The figures of 2026-12-08 came from the same arithmetic built from 48bc7e1's tree plus the
# variable (mu_hold_min at its default 0 there).
#   git worktree add /tmp/l3 4671fb2 && (cd /tmp/l3 && cargo build --release)
#   DDP_RUN=/tmp/l3/target/release/ddp-run SEED_CACHES="/root/.cache/ddp cache" sh lambda3.sh
set -e
for f in 0.1 0; do
  c=/tmp/ddp-cache-l3-$f
  for src in $SEED_CACHES; do
    for d in load gate-insert calibrate evaluate; do
      mkdir -p $c/$d; cp -aln $src/$d/. $c/$d/ 2>/dev/null || true
    done
  done
  # Only the dense evaluations may be shared: a pruned one is keyed by a training this
  # variable changes without changing its key.
  for e in $c/evaluate/*; do grep -q '"instance": "evaluate-dense"' $e/manifest.json || rm -rf $e; done
  DDP_L3=$f $DDP_RUN run docs/research/2026-12-08-ztravel/ztravel.toml --until evaluate \
    --cache $c --set anneal-train.steps=94
done
DDP_L3=0.1 $DDP_RUN run docs/research/2026-12-08-long/long.toml --cache /tmp/ddp-cache-l3-0.1 \
  --until evaluate-std@budget=1000
