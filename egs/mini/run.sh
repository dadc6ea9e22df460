#!/usr/bin/env bash
# The mini recipe: avtk end to end on the synthetic audio-visual corpus, on a CPU.
set -euo pipefail

stage=0
stop_stage=100
nj=2            # parallel jobs
seed=0          # corpus seed: the same seed gives the same corpus
corpus=corpus   # generated VoxCeleb-style tree
data=data
exp=exp

help_message="Usage: $0 [options]
  Runs every stage by default; --stage N --stop-stage M runs stages N..M.
  Stages:
    0  synthetic corpus, data dirs (validated) and trivial baselines (mean MFCC, raw pixels)"

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${0##*/}:${BASH_LINENO[0]}) $*" >&2; }

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  log "Stage 0: synthetic corpus, data dirs and trivial baselines"
  avtk make-synthetic-corpus --config conf/corpus.yaml --seed "$seed" --nj "$nj" "$corpus" "$data"
  for x in train test; do
    utils/validate_data_dir.sh --no-feats --check-audio "$data/$x"
  done
  mkdir -p "$exp/baseline"
  for modality in audio face; do
    avtk extract-baseline --modality "$modality" "$data/test" \
      "ark,scp:$exp/baseline/${modality}_test.ark,$exp/baseline/${modality}_test.scp"
    avtk score --subtract-mean --trials "$data/test/trials" \
      "scp:$exp/baseline/${modality}_test.scp" "$exp/baseline/scores_${modality}.txt"
    avtk compute-metrics "$exp/baseline/scores_${modality}.txt" > "$exp/baseline/metrics_${modality}.txt"
    log "baseline ($modality): $(tr '\n' ' ' < "$exp/baseline/metrics_${modality}.txt")"
  done
fi

log "done"
