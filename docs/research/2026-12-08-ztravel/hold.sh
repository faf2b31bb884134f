#!/bin/sh
# A minimum hold (anneal-train mu_hold_min) at the study's 4k-token budget, 20 %: mu stays at
# mu_0, where the gates are soft and can still trade places, for at least this fraction of the
# steps, then anneals. Same data, teacher and evaluation as the study (ztravel.toml).
set -e
R=docs/research/2026-12-08-ztravel/ztravel.toml
run() { ${DDP_RUN:-ddp-run} run $R --until evaluate --cache "${DDP_CACHE:-/root/.cache/ddp}" "$@"; }
for h in 0.25 0.5; do run --set anneal-train.mu_hold_min=$h; done
for h in 0.25 0.5; do run --set anneal-train.mu_hold_min=$h --set anneal-train.z_travel=0.75; done
