#!/bin/sh
# z_travel at the study's short budgets (issue 13: DDP behind hard-concrete at 4k tokens, 20 %).
# Each line trains one DDP run on the study's calibration/teacher and evaluates it on the study's
# 16,384 held-out tokens (recipes/study-budget.toml's settings via the short recipe).
set -e
R=docs/research/2026-12-08-ztravel/ztravel.toml
run() { ${DDP_RUN:-ddp-run} run $R --until evaluate --cache "${DDP_CACHE:-/root/.cache/ddp}" "$@"; }
for z in 0.5 0.375; do run --set anneal-train.z_travel=$z; done
run --set anneal-train.steps=94 --set anneal-train.z_travel=0.5
for z in 0.75 0.5; do run --set gate-insert.sparsity=0.5 --set anneal-train.z_travel=$z; done
