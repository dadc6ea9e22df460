#!/usr/bin/env bash
# ECAPA-L (C=1024) training throughput: fp32 against AMP (bf16, fp16) on one GPU, and a 1-GPU torchrun
# run over NCCL. Prints samples/s of the second epoch of each and the ratio to fp32.
#   bench/train_throughput.sh [WORKDIR]     (meant for a CUDA GPU; DEVICE=cpu SPEAKERS=4 BATCH=8 checks it on a CPU)
# REPEAT=N lists every training utterance N times (keys suffixed -rK, same features), so that an epoch has
# enough steps for a steady rate without generating N times the corpus.
set -euo pipefail
work=${1:-/tmp/avtk_train_bench}
speakers=${SPEAKERS:-200}
batch=${BATCH:-128}
repeat=${REPEAT:-1}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
avtk() { "$py" -m avtk.cli "$@"; }
mkdir -p "$work"
if [ ! -s "$work/data/train/feats.scp" ]; then
  avtk make-synthetic-corpus --num-train-speakers "$speakers" --num-test-speakers 2 --no-raw-frames \
    --nj "$(nproc)" "$work/corpus" "$work/data" 2>/dev/null
  avtk compute-fbank --num-threads 8 --write-num-frames "$work/data/train/utt2num_frames" \
    "scp:$work/data/train/wav.scp" "ark,scp:$work/fbank.ark,$work/data/train/feats.scp"
fi
train=$work/data/train
if [ "$repeat" -gt 1 ]; then
  train=$work/data/train_x$repeat
  mkdir -p "$train"
  for f in wav.scp feats.scp utt2spk utt2num_frames; do
    awk -v n="$repeat" '{k=$1; $1=""; for (i = 1; i <= n; i++) print k "-r" i $0}' "$work/data/train/$f" | sort > "$train/$f"
  done
fi
cat > "$work/ecapa_l.yaml" <<YAML
model: {encoder: ecapa_tdnn, encoder_args: {channels: 1024, embed_dim: 192}}
data: {batch_size: $batch, num_workers: 8}
runtime: {epochs: 2, log_interval: 100, device: $device}
YAML
rate() { grep -o "epoch 2 done, [0-9.]* samples/s" "$1" | awk '{print $4}'; }
for amp in none bf16 fp16; do
  avtk train --config "$work/ecapa_l.yaml" --train-data "$train" --exp "$work/exp_$amp" \
    runtime.amp=$amp 2> "$work/train_$amp.log"
done
"$py" -m torch.distributed.run --standalone --nproc_per_node 1 -m avtk.cli train --config "$work/ecapa_l.yaml" \
  --train-data "$train" --exp "$work/exp_ddp" runtime.amp=bf16 2> "$work/train_ddp.log"
echo "torchrun: $(grep -o 'on [^ ]* ([a-z]* backend)' "$work/train_ddp.log" || echo 'single process (WORLD_SIZE 1)')"
fp32=$(rate "$work/train_none.log")
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
echo "ECAPA-L C=1024, batch $batch, 2 s crops, $(wc -l < "$train/utt2spk") utterances per epoch, on ${gpu:-$device}"
printf "%-22s %12s %8s\n" mode samples/s vs_fp32
for run in none bf16 fp16 ddp; do
  r=$(rate "$work/train_$run.log")
  name=$run; [ "$run" = none ] && name=fp32; [ "$run" = ddp ] && name="torchrun 1 GPU, bf16"
  printf "%-22s %12s %8s\n" "$name" "$r" "$(awk -v a="$r" -v b="$fp32" 'BEGIN{printf "%.2fx", a/b}')"
done
