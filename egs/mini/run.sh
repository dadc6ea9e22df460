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
    0  synthetic corpus, data dirs (validated) and trivial baselines (mean MFCC, raw pixels)
    1  fbank to ark/scp (\$cmd JOB=1:\$nj over split_scp splits): data/*/feats.scp, utt2num_frames
    3  train the speaker network (conf/ecapa_mini.yaml) -> exp/ecapa/avg_model.pt
    5  extract speaker embeddings (\$cmd JOB=1:\$nj) -> exp/ecapa/emb/{train,test}.scp
    6  cosine scoring of the test trials -> exp/ecapa/scores/, metrics"

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${0##*/}:${BASH_LINENO[0]}) $*" >&2; }
# The lines of a parallel stage's output must add up to its input's.
check_count() {
  local got want
  got=$(wc -l < "$1"); want=$(wc -l < "$2")
  if [ "$got" -ne "$want" ]; then log "ERROR: $1 has $got lines but $2 has $want"; exit 1; fi
}

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

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "Stage 1: fbank to ark/scp"
  for x in train test; do
    dir=$PWD/fbank/$x
    mkdir -p "$dir/split$nj" "$exp/log"
    split_scp "$data/$x/wav.scp" $(for n in $(seq "$nj"); do echo "$dir/split$nj/wav.$n.scp"; done)
    $cmd JOB=1:"$nj" "$exp/log/fbank_$x.JOB.log" \
      avtk compute-fbank --config conf/fbank.yaml --write-num-frames "$dir/utt2num_frames.JOB" \
        "scp:$dir/split$nj/wav.JOB.scp" "ark,scp:$dir/raw_fbank_$x.JOB.ark,$dir/raw_fbank_$x.JOB.scp"
    for n in $(seq "$nj"); do cat "$dir/raw_fbank_$x.$n.scp"; done | sort > "$data/$x/feats.scp"
    for n in $(seq "$nj"); do cat "$dir/utt2num_frames.$n"; done | sort > "$data/$x/utt2num_frames"
    check_count "$data/$x/feats.scp" "$data/$x/wav.scp"
    utils/validate_data_dir.sh "$data/$x"
  done
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  log "Stage 3: train the speaker network"
  avtk train --config conf/ecapa_mini.yaml --train-data "$data/train" --exp "$exp/ecapa" \
    --val-trials "$data/test/trials"
fi

if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  log "Stage 5: extract speaker embeddings"
  for x in train test; do
    dir=$exp/ecapa/emb
    mkdir -p "$dir/split$nj"
    split_scp "$data/$x/feats.scp" $(for n in $(seq "$nj"); do echo "$dir/split$nj/feats_$x.$n.scp"; done)
    $cmd JOB=1:"$nj" "$exp/log/embed_$x.JOB.log" \
      avtk extract-embeddings --model "$exp/ecapa/avg_model.pt" \
        "scp:$dir/split$nj/feats_$x.JOB.scp" "ark,scp:$PWD/$dir/$x.JOB.ark,$PWD/$dir/$x.JOB.scp"
    for n in $(seq "$nj"); do cat "$dir/$x.$n.scp"; done | sort > "$dir/$x.scp"
    check_count "$dir/$x.scp" "$data/$x/feats.scp"
  done
fi

if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  log "Stage 6: score the test trials"
  mkdir -p "$exp/ecapa/scores"
  avtk score --trials "$data/test/trials" "scp:$exp/ecapa/emb/test.scp" "$exp/ecapa/scores/test_cosine.txt"
  avtk compute-metrics "$exp/ecapa/scores/test_cosine.txt" > "$exp/ecapa/scores/metrics_cosine.txt"
  log "ecapa (cosine): $(tr '\n' ' ' < "$exp/ecapa/scores/metrics_cosine.txt")"
  log "baseline (mean MFCC): $(tr '\n' ' ' < "$exp/baseline/metrics_audio.txt")"
fi

log "done"
