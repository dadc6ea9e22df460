#!/usr/bin/env bash
# A recipe for your own corpus. Copy this directory anywhere, point it at Kaldi data dirs, and run it:
#   cp -r egs/TEMPLATE ~/myrecipe && cd ~/myrecipe
#   ./run.sh --train-set /corpora/mine/train --test-sets "/corpora/mine/test" [--dev-set /corpora/mine/dev]
# The data dirs given are read, never written: stage 0 copies them into data/.
set -euo pipefail

stage=0
stop_stage=100
train_set=          # data dir of the training speakers: wav.scp, utt2spk, spk2utt (utt2dur, segments optional)
dev_set=            # optional data dir with trials: validation EER while training, calibration and fusion
test_sets=          # one or more data dirs with trials, in one quoted argument: "DIR1 DIR2"
modalities=audio    # audio, or audio,face: faces too, then each set needs frames.scp, video.scp or raw_frames.scp
speaker_conf=conf/ecapa_small.yaml
face_conf=conf/iresnet_small.yaml
speaker_opts=       # section.key=value overrides of --speaker-conf, e.g. "runtime.epochs=20 data.batch_size=32"
face_opts=          # the same for --face-conf
init_model=         # fine-tune: start the speaker network from this model (avtk train --init-model)
face_init_model=    # fine-tune: start the face network from this model
musan=              # the MUSAN directory as downloaded: stage 0 makes data/musan_{noise,music,speech} and stage 3
rirs=               # the RIRS_NOISES directory (data/rirs) turns the wave augmentation on for them (wav input)
face_detector=mtcnn  # video.scp / raw_frames.scp to aligned faces: mtcnn, or landmarks (landmarks.txt per dir)
check_audio=true    # stage 0: read every audio file's header (missing, truncated, duration against utt2dur)
nj=4                # parallel jobs of fbank, face frames and extraction ($cmd JOB=1:$nj)
gpus=0              # training processes under torchrun (one per GPU); 0: one plain process (CPU or one GPU)
device=cpu          # extraction and face detection: cpu, cuda (a GPU of its own per job) or cuda:N
top_n=100           # AS-Norm: highest cohort scores per side (the cohort: the training speakers' mean embeddings)

help_message="Usage: $0 --train-set DIR --test-sets \"DIR ...\" [--dev-set DIR] [options]
  A recipe for your own corpus, audio-only or audio-visual, trained from scratch or fine-tuned (--init-model).
  Every data dir is a Kaldi data dir (wav.scp, utt2spk, spk2utt; utt2dur and segments optional); the test and
  dev sets also hold a trials file (\`enroll test target|nontarget\`). The sets are named by their directory's
  last component, so the names must differ. Runs every stage by default; --stage N --stop-stage M runs N..M.
  Stages:
    0  validate the data dirs (validate_data_dir.sh) and copy them into data/<name>; with --musan/--rirs,
       the augmentation sources data/musan_{noise,music,speech}, data/rirs
    1  a speaker config with data.input: feats (conf/ecapa_small.yaml reads the audio, data.input: wav): fbank
       (conf/fbank.yaml) of the training and dev sets (\$cmd JOB=1:\$nj) -> data/<name>/feats.scp
    2  faces (--modalities audio,face): frames.scp as given, or aligned from video.scp / raw_frames.scp with
       --face-detector -> frame_align/<name>/, data/<name>/frames.scp
    3  train the speaker network (\$speaker_conf \$speaker_opts [--init-model]) -> exp/speaker/avg_model.pt
    4  train the face network (\$face_conf \$face_opts [--face-init-model]) -> exp/face/avg_model.pt
    5  embeddings of every set (\$cmd JOB=1:\$nj; speech from the audio, by the model's own front end)
    6  cosine and AS-Norm scoring of the dev and test trials (cohort and mean: the training set)
    7  with --dev-set: calibration (and audio-visual logistic-regression fusion) trained on the dev trials;
       audio-visual: the mean of the two cosines -> exp/fusion/
    8  metrics of every scores file -> exp/metrics/<test>/<system>.{txt,json}, the table exp/RESULTS.md
  Options: --stage --stop-stage --train-set --dev-set --test-sets --modalities --speaker-conf --face-conf
           --speaker-opts --face-opts --init-model --face-init-model --musan --rirs --face-detector --check-audio
           --nj --gpus --device --top-n"

. ./path.sh
. ./cmd.sh
. parse_options.sh

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${0##*/}:${BASH_LINENO[0]}) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
in_range() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
check_count() {
  local got want
  got=$(wc -l < "$1"); want=$(wc -l < "$2")
  [ "$got" -eq "$want" ] || die "$1 has $got lines but $2 has $want"
}

[ "$nj" -ge 1 ] || die "--nj must be >= 1, not $nj"
case $modalities in
  audio) face=false ;;
  audio,face|face,audio) face=true ;;
  *) die "--modalities is '$modalities'; choose audio or audio,face" ;;
esac
[ -n "$train_set" ] || die "--train-set DIR is required (a Kaldi data dir of the training speakers)"
[ -n "$test_sets" ] || die "--test-sets \"DIR ...\" is required (Kaldi data dirs with trials)"
train=$(basename "$train_set")
dev=
[ -z "$dev_set" ] || dev=$(basename "$dev_set")
tests=$(for d in $test_sets; do basename "$d"; done | tr '\n' ' ')
tests=${tests% }
# the sets, each once, in the order train, dev, tests
all_sets="$train${dev:+ $dev} $tests"
for x in $all_sets; do
  case $x in
    .|..|/|musan_noise|musan_music|musan_speech|rirs)
      die "a set cannot be named '$x' (the last component of its data dir's path; data/ holds the augmentation" \
        "sources musan_noise, musan_music, musan_speech and rirs): give the dir by its name, or rename it" ;;
  esac
done
dup=$(echo "$all_sets" | tr ' ' '\n' | sort | uniq -d | head -1)
[ -z "$dup" ] || die "two of the data dirs are named '$dup': a set is named by its directory's last component," \
  "so give each a different name"

# $cmd JOB=1:$n over at most $nj parts (a set smaller than $nj gets one part per utterance)
parts() { local n; n=$(wc -l < "$1"); [ "$n" -lt "$nj" ] && echo "$n" || echo "$nj"; }
# split_to TABLE DIR NAME N: DIR/NAME.{1..N}.scp
split_to() {
  mkdir -p "$2"
  split_scp "$1" $(for n in $(seq "$4"); do echo "$2/$3.$n.scp"; done)
}
# the utterances of a set: its segments, else its wav.scp
utt_table() { if [ -f "data/$1/segments" ]; then echo "data/$1/segments"; else echo "data/$1/wav.scp"; fi; }
# data.input of the speaker config with --speaker-opts, read by avtk's own config reader (feats when it cannot
# be read: stage 3 then names the problem)
speaker_input() {
  local overrides
  read -r -a overrides <<< "$speaker_opts"
  "${PYTHON:-python3}" - "$speaker_conf" "${overrides[@]}" 2>/dev/null <<'PY' || echo feats
import sys
from avtk.train.config import load_config
print(load_config(sys.argv[1], sys.argv[2:])["data"]["input"] or "feats")
PY
}
# extraction and face detection jobs: one GPU each with --device cuda (run.pl sets CUDA_VISIBLE_DEVICES per job)
ext_cmd=$cmd
if [ "$device" = cuda ]; then ext_cmd="$cmd --gpu 1"; fi
train_cmd_prefix() {
  if [ "$gpus" -gt 0 ]; then echo "torchrun --nproc_per_node $gpus -m avtk.cli"; else echo "avtk"; fi
}

if in_range 0; then
  log "Stage 0: validate the data dirs and copy them into data/"
  sources="$train_set${dev_set:+ $dev_set} $test_sets"
  audio_check=
  if [ "$check_audio" = true ]; then audio_check=--check-audio; fi
  for src in $sources; do
    [ -d "$src" ] || die "no such data dir: $src"
    name=$(basename "$src")
    # the recipe's own copy is rewritten below: a source that is that copy would be lost
    if [ -d "data/$name" ] && [ "$(cd "$src" && pwd -P)" = "$(cd "data/$name" && pwd -P)" ]; then
      die "$src is this recipe's own copy data/$name, which stage 0 rewrites: give the original data dir"
    fi
    validate_data_dir.sh --no-feats $audio_check "$src"
    if [ "$name" != "$train" ] && [ ! -f "$src/trials" ]; then
      die "$src has no trials file (\`enroll test target|nontarget\` per line): a test or dev set needs one"
    fi
    if $face && [ ! -f "$src/frames.scp" ] && [ ! -f "$src/video.scp" ] && [ ! -f "$src/raw_frames.scp" ]; then
      die "$src has no frames.scp, video.scp or raw_frames.scp: --modalities audio,face needs the faces of" \
        "every set"
    fi
  done
  for src in $sources; do
    name=$(basename "$src")
    rm -rf "data/$name"
    mkdir -p "data/$name"
    for f in "$src"/*; do
      if [ -f "$f" ]; then cp "$f" "data/$name/"; fi
    done
    chmod u+w "data/$name"/*
    trials=
    if [ -f "data/$name/trials" ]; then trials=", $(wc -l < "data/$name/trials") trials"; fi
    log "data/$name: $(wc -l < "data/$name/utt2spk") utterances of $(wc -l < "data/$name/spk2utt") speakers$trials"
  done
  if [ -n "$musan" ] || [ -n "$rirs" ]; then
    avtk prepare-augment ${musan:+--musan "$musan"} ${rirs:+--rirs "$rirs"} data
  fi
fi

[ -f "data/$train/utt2spk" ] || die "data/$train/utt2spk is missing: run stage 0 first"

if in_range 1 && [ "$(speaker_input)" != feats ]; then
  log "Stage 1: nothing to do: the speaker config ($speaker_conf) reads the audio, not fbank"
elif in_range 1; then
  log "Stage 1: fbank of the sets training reads"
  for x in $train $dev; do
    dir=$PWD/fbank/$x table=$(utt_table "$x")
    n=$(parts "$table")
    split_to "$table" "$dir/split$n" utts "$n"
    src=$dir/split$n/utts.JOB.scp extra=()
    if [ -f "data/$x/segments" ]; then extra=(--segments "$src"); src=data/$x/wav.scp; fi
    $cmd JOB=1:"$n" "exp/log/fbank_$x.JOB.log" \
      avtk compute-fbank --config conf/fbank.yaml "${extra[@]}" --write-num-frames "$dir/utt2num_frames.JOB" \
        "scp:$src" "ark,scp:$dir/raw_fbank.JOB.ark,$dir/raw_fbank.JOB.scp"
    for k in $(seq "$n"); do cat "$dir/raw_fbank.$k.scp"; done | sort > "data/$x/feats.scp"
    for k in $(seq "$n"); do cat "$dir/utt2num_frames.$k"; done | sort > "data/$x/utt2num_frames"
    check_count "data/$x/feats.scp" "data/$x/utt2spk"
  done
fi

if $face && in_range 2; then
  log "Stage 2: face frames"
  for x in $all_sets; do
    if [ -f "data/$x/frames.scp" ]; then
      log "data/$x/frames.scp lists aligned frames: used as given"
      continue
    fi
    table=data/$x/video.scp
    [ -f "$table" ] || table=data/$x/raw_frames.scp
    dir=$PWD/frame_align/$x
    n=$(parts "$table")
    split_to "$table" "$dir/split$n" source "$n"
    $ext_cmd JOB=1:"$n" "exp/log/faces_$x.JOB.log" \
      avtk extract-face-frames --detector "$face_detector" --device "$device" --skip-bad \
        "$dir/split$n/source.JOB.scp" "$dir" "$dir/split$n/frames.JOB.scp"
    for k in $(seq "$n"); do cat "$dir/split$n/frames.$k.scp"; done | sort > "data/$x/frames.scp"
  done
fi

if in_range 3; then
  log "Stage 3: train the speaker network ($speaker_conf${init_model:+, from $init_model})"
  opts=()
  [ -n "$dev" ] && opts+=(--val-trials "data/$dev/trials")
  [ -n "$init_model" ] && opts+=(--init-model "$init_model")
  augment=()
  if [ -n "$musan" ]; then
    augment+=(augment.wave=true augment.noise_dir=data/musan_noise augment.music_dir=data/musan_music
              augment.speech_dir=data/musan_speech)
  fi
  [ -n "$rirs" ] && augment+=(augment.wave=true augment.rir_dir=data/rirs)
  read -r -a overrides <<< "$speaker_opts"  # split on blanks, no glob ([1.0,0.9] stays as written)
  $(train_cmd_prefix) train --config "$speaker_conf" --train-data "data/$train" --exp exp/speaker "${opts[@]}" \
    "${augment[@]}" "${overrides[@]}"
fi

if $face && in_range 4; then
  log "Stage 4: train the face network ($face_conf${face_init_model:+, from $face_init_model})"
  opts=()
  [ -n "$dev" ] && opts+=(--val-trials "data/$dev/trials")
  [ -n "$face_init_model" ] && opts+=(--init-model "$face_init_model")
  read -r -a overrides <<< "$face_opts"
  $(train_cmd_prefix) train --config "$face_conf" --train-data "data/$train" --exp exp/face "${opts[@]}" \
    "${overrides[@]}"
fi

systems() { echo speaker; if $face; then echo face; fi; }

# embed SYSTEM SET: $cmd JOB=1:n extraction into exp/SYSTEM/emb/SET.scp (faces: and SET.no_face)
embed() {
  local sys=$1 x=$2 dir=exp/$1/emb table n extra=()
  if [ "$sys" = face ]; then table=data/$x/frames.scp; else table=$(utt_table "$x"); fi
  n=$(parts "$table")
  split_to "$table" "$dir/split$n" "$x" "$n"
  local src=$dir/split$n/$x.JOB.scp
  if [ "$sys" = speaker ] && [ -f "data/$x/segments" ]; then
    extra=(--segments "$src")
    src=data/$x/wav.scp
  fi
  $ext_cmd JOB=1:"$n" "exp/log/embed_${sys}_$x.JOB.log" \
    avtk extract-embeddings --model "exp/$sys/avg_model.pt" --device "$device" "${extra[@]}" \
      "scp:$src" "ark,scp:$PWD/$dir/$x.JOB.ark,$PWD/$dir/$x.JOB.scp"
  for k in $(seq "$n"); do cat "$dir/$x.$k.scp"; done | sort > "$dir/$x.scp"
  if [ "$sys" = face ]; then
    for k in $(seq "$n"); do cat "$dir/$x.$k.no_face"; done | sort > "$dir/$x.no_face"
    [ "$(cat "$dir/$x.scp" "$dir/$x.no_face" | wc -l)" -eq "$(wc -l < "$table")" ] \
      || die "$dir/$x.scp and $x.no_face do not add up to $table"
  else
    check_count "$dir/$x.scp" "data/$x/utt2spk"
  fi
}

if in_range 5; then
  log "Stage 5: embeddings"
  for sys in $(systems); do
    for x in $all_sets; do embed "$sys" "$x"; done
  done
fi

if in_range 6; then
  log "Stage 6: cosine and AS-Norm scoring"
  for sys in $(systems); do
    emb=exp/$sys/emb
    mkdir -p "exp/$sys/scores"
    for x in $dev $tests; do
      # --allow-missing: the trials of an utterance without an embedding (a face model's no_face) are listed in
      # *.missing; fusion falls back to the modalities a trial has
      avtk score --allow-missing --trials "data/$x/trials" --mean-from "scp:$emb/$train.scp" \
        "scp:$emb/$x.scp" "exp/$sys/scores/${x}_cosine.txt"
      avtk score --allow-missing --trials "data/$x/trials" --mean-from "scp:$emb/$train.scp" \
        --cohort "scp:$emb/$train.scp" --cohort-utt2spk "data/$train/utt2spk" --top-n "$top_n" \
        "scp:$emb/$x.scp" "exp/$sys/scores/${x}_asnorm.txt"
    done
  done
fi

if in_range 7; then
  log "Stage 7: calibration and fusion"
  mkdir -p exp/fusion
  a=exp/speaker/scores f=exp/face/scores
  if $face; then
    for x in $tests; do
      avtk fuse --method mean --allow-missing --out "exp/fusion/${x}_mean.txt" "$a/${x}_cosine.txt" "$f/${x}_cosine.txt"
    done
  fi
  if [ -n "$dev" ]; then
    avtk fuse --method logreg --modalities audio --train-scores "$a/${dev}_asnorm.txt" \
      --model-out exp/fusion/calibration_audio.yaml --out "exp/fusion/${dev}_audio_calibrated.txt" \
      "$a/${dev}_asnorm.txt"
    for x in $tests; do
      avtk fuse --model exp/fusion/calibration_audio.yaml --out "exp/fusion/${x}_audio_calibrated.txt" \
        "$a/${x}_asnorm.txt"
    done
    if $face; then
      avtk fuse --method logreg --modalities audio,face --allow-missing \
        --train-scores "$a/${dev}_asnorm.txt" "$f/${dev}_asnorm.txt" --model-out exp/fusion/logreg.yaml \
        --out "exp/fusion/${dev}_logreg.txt" "$a/${dev}_asnorm.txt" "$f/${dev}_asnorm.txt"
      for x in $tests; do
        avtk fuse --model exp/fusion/logreg.yaml --allow-missing --out "exp/fusion/${x}_logreg.txt" \
          "$a/${x}_asnorm.txt" "$f/${x}_asnorm.txt"
      done
    fi
  fi
fi

if in_range 8; then
  log "Stage 8: metrics"
  # row TEST NAME SYSTEM SCORING SCORES [--calibrated]: exp/metrics/TEST/NAME.{txt,json} and a table row
  row() {
    [ -f "$5" ] || return 0
    local out=exp/metrics/$1/$2
    mkdir -p "exp/metrics/$1"
    avtk compute-metrics ${6:-} --json "$out.json" "$5" > "$out.txt"
    awk -v set="$1" -v sys="$3" -v sc="$4" '
      /^EER/ {eer=$2} /minDCF\(p=0.01\)/ {d1=$2} /minDCF\(p=0.05\)/ {d5=$2} /^minCllr/ {mc=$2} /^Cllr/ {cllr=$2}
      END {printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", set, sys, sc, eer, d1, d5, mc,
           (cllr == "" ? "-" : cllr)}' "$out.txt"
  }
  {
    echo "# Results (train: $train, $(wc -l < "data/$train/spk2utt") speakers${dev:+; calibration: $dev})"
    echo
    echo "| set | system | scoring | EER % | minDCF p=0.01 | minDCF p=0.05 | minCllr | Cllr |"
    echo "|---|---|---|---|---|---|---|---|"
    for x in $tests; do
      for sys in $(systems); do
        row "$x" "${sys}_cosine" "$sys" cosine "exp/$sys/scores/${x}_cosine.txt"
        row "$x" "${sys}_asnorm" "$sys" AS-Norm "exp/$sys/scores/${x}_asnorm.txt"
      done
      if [ -n "$dev" ]; then
        row "$x" speaker_calibrated speaker "AS-Norm, calibrated on $dev" "exp/fusion/${x}_audio_calibrated.txt" \
          --calibrated
      fi
      if $face; then
        row "$x" fusion_mean "fusion: mean (a+v)/2" cosine "exp/fusion/${x}_mean.txt"
        if [ -n "$dev" ]; then
          row "$x" fusion_logreg "fusion: logistic regression ($dev)" "AS-Norm, calibrated" \
            "exp/fusion/${x}_logreg.txt" --calibrated
        fi
      fi
    done
  } > exp/RESULTS.md
  cat exp/RESULTS.md
fi

log "done"
