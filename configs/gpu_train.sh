#!/usr/bin/env bash
# Train the D = 256 GPU recipe (gpu_d256.yaml), its T=1 ablation and a synthetic-only model side by side
# on one GPU, each in its own detached process, for the same wall-clock budget.
#   bash configs/gpu_train.sh DATA_DIR RUN_DIR SECONDS
# DATA_DIR holds train/*.mgf and fasta/*.fasta. max_steps comes from a measured
# throughput so the learning-rate schedule ends near the time limit.
set -euo pipefail
data=$1; runs=$2; seconds=$3
mkdir -p "$runs"
python3 benchmarks/bench_train_throughput.py --device cuda --seconds 8 --batch-size 256 \
    --fasta "$data/fasta/crap_2015-01-30.fasta" | tee "$runs/throughput.txt"
share=0.4  # three runs share one GPU; measured solo rates are discounted by this
steps() { awk -v s="$1" -v t="$seconds" -v f="$share" '$1 == s {print int($3 * t * f)}' \
    "$runs/throughput.txt"; }
limit=$(python3 -c "import sys; s=int(sys.argv[1]); print(f'00:{s//3600:02d}:{s%3600//60:02d}:{s%60:02d}')" "$seconds")
fasta=("$data"/fasta/*.fasta)
train=("$data"/train/*.mgf)
launch() {  # name config steps [labelled files...]
    local name=$1 config=$2 max_steps=$3; shift 3
    setsid nohup python3 -m peptrm train "$@" --fasta "${fasta[@]}" -c "$config" \
        --max-steps "$max_steps" --max-time "$limit" -o "$runs/$name" --no-progress \
        > "$runs/$name.log" 2>&1 < /dev/null &
    echo "launched $name: $max_steps steps, at most $limit"
}
launch d256 configs/gpu_d256.yaml "$(steps d256_n4_T2)" "${train[@]}"
launch ablation_t1 configs/ablation_t1.yaml "$(steps d256_n4_T1)" "${train[@]}"
launch synthetic_only configs/gpu_d256.yaml "$(steps d256_n4_T2)"
