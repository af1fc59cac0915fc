#!/usr/bin/env bash
# Copy what the GPU runs have produced so far into OUT (weights + one log archive).
#   bash configs/gpu_collect.sh RUN_DIR OUT
runs=$1; out=$2
for name in bundled ablation_t1 synthetic_only; do
    [ -f "$runs/$name/model/model.safetensors" ] && \
        cp "$runs/$name/model/model.safetensors" "$out/$name.safetensors"
done
tar czf "$out/logs.tgz" -C "$runs" --exclude='*.ckpt' --exclude='*.safetensors' . 2>/dev/null
ls -la "$out"; tail -n 3 "$runs"/*.log
