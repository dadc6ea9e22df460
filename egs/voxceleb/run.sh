#!/usr/bin/env bash
# VoxCeleb: train on VoxCeleb2 dev (speech: ECAPA-L, faces: iresnet18), test on VoxCeleb1 O/E/H, fuse, cleanse
# the training list and retrain on it. Either layout of the data: the seed's tree or the official release.
set -euo pipefail

stage=0
stop_stage=100
layout=seed          # seed: --vox2 and --vox1 are the seed's trees; official: --vox2-dev, --vox1 (and --trials-dir)
vox2=                # seed: VoxCeleb2 root with wav/, frame_align/, train_all.txt
vox1=                # VoxCeleb1 root: seed: wav/, frame_align/, {O,E,H}_list.txt, {O,E,H}_trials.txt; official: wav/
vox2_dev=            # official: VoxCeleb2 dev with aac/ (m4a) and mp4/
trials_dir=          # official: veri_test2.txt, list_test_all2.txt, list_test_hard2.txt (default: --vox1)
musan=               # stage 0: the MUSAN directory (music/, noise/, speech/) -> data/musan_{noise,music,speech}
rirs=                # stage 0: the RIRS_NOISES directory (simulated_rirs/) -> data/rirs; the configs' augmentation
                     # reads these four data dirs (avtk prepare-augment)
pretrained=          # a directory with the seed's A-Vox2.model and V-Vox2.model (V-Glint.model optional):
                     # stages 3-4 import them instead of training, stage 10 is skipped
speaker_conf=conf/ecapa_l.yaml
lm_conf=auto         # stage 3: large-margin fine-tuning after training; auto: <speaker_conf>_lm.yaml when it
                     # exists (conf/ecapa_l_lm.yaml, conf/resnet34_lm.yaml), none: no LM
face_conf=conf/iresnet18.yaml
av_conf=conf/av_joint.yaml  # stage 11: the joint audio-visual embedding over the two networks (none: skip it)
train_opts=          # section.key=value overrides for both trainings, e.g. "runtime.epochs=40 data.num_workers=4"
lm_opts=             # section.key=value overrides for the large-margin fine-tuning
av_opts=             # section.key=value overrides for the joint audio-visual embedding (stage 11)
gpus=8               # GPUs per node for torchrun (0: plain CPU training, one process)
nnodes=1             # torchrun multi-node: run this script on every node with its --node-rank (see --help)
node_rank=0
master_addr=localhost
master_port=29500
sync_timeout=172800.0  # multi-node: seconds a node > 0 waits for node 0's stages before it gives up
sync_poll=10.0       # multi-node: seconds between its looks at exp/sync/ (both numbers: .0, not an integer)
nj=32                # parallel jobs of fbank, face frames and extraction ($cmd JOB=1:$nj)
device=cpu           # extraction and face detection device: cpu, or cuda (each job gets its own GPU:
                     # \$cmd --gpu 1, see utils/run.pl); cuda:N pins every job to GPU N
top_n=300            # AS-Norm cohort size (cohort: the training speakers' mean embeddings)
cal_set=O            # the trial set logistic-regression fusion is trained on (applied to the others)

help_message="Usage: $0 --layout seed --vox2 DIR --vox1 DIR [options]
       $0 --layout official --vox2-dev DIR --vox1 DIR [--trials-dir DIR] [options]
  Stages (every one by default; --stage N --stop-stage M runs N..M from the files earlier stages wrote):
    0  data dirs (avtk prepare-voxceleb): data/{vox2_train|vox2_dev}, data/vox1_{O,E,H} with trials; with
       --musan/--rirs, the augmentation sources data/musan_{noise,music,speech}, data/rirs (avtk prepare-augment)
    1  fbank of every set (\$cmd JOB=1:\$nj) -> fbank/, data/*/feats.scp
    2  face frames: official layout: MTCNN + alignment of the mp4s (\$cmd JOB=1:\$nj) -> frame_align/;
       seed layout: its frame_align/ tree is used as is
    3  speaker network (\$speaker_conf) with torchrun over --gpus/--nnodes -> exp/speaker/avg_model.pt, then
       its large-margin fine-tuning (--lm-conf: avtk train --init-model exp/speaker/avg_model.pt) ->
       exp/speaker_lm/avg_model.pt; stages 5-8 embed and score both, fusion and cleansing use the fine-tuned one
    4  face network (\$face_conf) -> exp/face/avg_model.pt       (with --pretrained: 3-4 import the seed's models)
    5  embeddings of the training set and the trial sets (\$cmd JOB=1:\$nj)
    6  cosine and AS-Norm scoring of O/E/H
    7  fusion: the seed's mean, and logistic regression trained on --cal-set, applied to the other sets
    8  the metrics table -> exp/RESULTS.md
    9  audio-visual cleansing -> exp/cleanse/train_all_clean.txt, data/<train>_clean
    10 retrain the speaker network on the cleaned list and compare O/E/H EERs
    11 the joint audio-visual embedding (--av-conf) over the speaker and face networks' embeddings: trained on
       4 random 2 s crops per training utterance, embedded, scored (cosine, AS-Norm) -> exp/av_joint/, rows
       in exp/RESULTS.md (node 0 only; one process, on the GPU when there is one)
  Several nodes (--nnodes N): start this script on every node, with the same options, the same exp/ and
  data/ on a shared file system, and its --node-rank 0..N-1. Node 0 runs every stage. The other nodes run
  only the torchrun trainings (3, 4 and the retraining of 10; none with --pretrained): before each they wait
  for node 0's marker exp/sync/stage.K.done of every earlier stage K of the range, looking every
  --sync-poll seconds, and stop with an error after --sync-timeout seconds or when node 0 fails
  (exp/sync/failed). They never write data/, fbank/, frame_align/ or the embeddings and scores.
  Node 0 clears exp/sync/ when it starts and removes it when it ends: start node 0 first, or all nodes together.
  --device cuda gives each extraction job its own GPU (\$cmd --gpu 1: run.pl sets CUDA_VISIBLE_DEVICES per job,
  slurm.pl asks Slurm for --gres=gpu:1); its speech jobs read and decode ahead (extract-embeddings
  --num-workers 4).
  Options: --stage --stop-stage --layout --vox2 --vox1 --vox2-dev --trials-dir --musan --rirs --pretrained --speaker-conf
           --lm-conf --lm-opts --face-conf --av-conf --av-opts --train-opts --gpus --nnodes --node-rank --master-addr --master-port --sync-timeout
           --sync-poll --nj --device --top-n --cal-set"

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
[ "$nj" -ge 1 ] || { echo "$0: option --nj must be >= 1, not $nj" >&2; exit 1; }

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${0##*/}:${BASH_LINENO[0]}) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
check_count() {
  local got want
  got=$(wc -l < "$1"); want=$(wc -l < "$2")
  [ "$got" -eq "$want" ] || die "$1 has $got lines but $2 has $want"
}
in_range() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
main_node() { [ "$node_rank" -eq 0 ]; }
# the stages every node runs: the torchrun trainings
all_nodes_stage() { [ -z "$pretrained" ] && { [ "$1" -eq 3 ] || [ "$1" -eq 4 ] || [ "$1" -eq 10 ]; }; }
sync_dir=exp/sync
# wait_for_node0 K: a node > 0 waits for node 0's marker of every stage of the range before K
wait_for_node0() {
  local k waited
  for ((k = stage; k < $1; k++)); do
    waited=0
    until [ -f "$sync_dir/stage.$k.done" ]; do
      # a failure marker older than this node (2 s for clock granularity) is a past run's, which node 0 clears
      if [ -f "$sync_dir/failed" ] && [ "$(stat -c %Y "$sync_dir/failed")" -ge $((started - 2)) ]; then
        die "node $node_rank: node 0 failed ($sync_dir/failed: $(cat "$sync_dir/failed")); see node 0's output"
      fi
      awk -v w="$waited" -v t="$sync_timeout" 'BEGIN {exit !(w >= t)}' \
        && die "node $node_rank: waited ${sync_timeout}s for $sync_dir/stage.$k.done (node 0's stage $k) before stage $1; is node 0 running this script with the same exp/ on a shared file system?"
      sleep "$sync_poll"
      waited=$(awk -v w="$waited" -v p="$sync_poll" 'BEGIN {print w + p}')
    done
  done
}
# run_stage K: whether this node runs stage K (node > 0: a training stage, once node 0 is past the ones before)
run_stage() {
  in_range "$1" || return 1
  main_node && return 0
  if ! all_nodes_stage "$1"; then
    log "Stage $1: node 0 runs it (this is node $node_rank)"
    return 1
  fi
  wait_for_node0 "$1"
}
# stage_done K: node 0 of a multi-node run marks stage K done for the others
stage_done() { if [ "$nnodes" -gt 1 ] && main_node; then touch "$sync_dir/stage.$1.done"; fi; }
started=$(date +%s)
if [ "$nnodes" -gt 1 ]; then
  [ "$node_rank" -ge 0 ] && [ "$node_rank" -lt "$nnodes" ] || die "--node-rank $node_rank: expected 0..$((nnodes - 1))"
  [ "$gpus" -gt 0 ] || die "--nnodes $nnodes needs --gpus > 0 (the trainings run through torchrun)"
  if main_node; then
    rm -rf "$sync_dir"
    mkdir -p "$sync_dir"
    trap 'rc=$?; if [ $rc -eq 0 ]; then rm -rf "$sync_dir"; else mkdir -p "$sync_dir"; echo "exit $rc at $(date)" > "$sync_dir/failed"; fi' EXIT
  fi
elif [ "$node_rank" -ne 0 ]; then
  die "--node-rank $node_rank with --nnodes 1"
fi
# extraction jobs: one GPU each with --device cuda
ext_cmd=$cmd
[ "$device" = cuda ] && ext_cmd="$cmd --gpu 1"
# Split an scp into $nj parts under DIR: split_to SCP DIR NAME -> DIR/NAME.{1..nj}.scp
split_to() {
  mkdir -p "$2"
  split_scp "$1" $(for n in $(seq "$nj"); do echo "$2/$3.$n.scp"; done)
}

case $layout in
  seed) train=vox2_train ;;
  official) train=vox2_dev ;;
  *) die "--layout is '$layout'; choose seed or official" ;;
esac
sets() { for x in O E H; do [ -f "data/vox1_$x/trials" ] && echo "vox1_$x"; done; true; }
spk_exp=exp/speaker face_exp=exp/face
# large-margin fine-tuning: its config, or none (not with --pretrained: the imported networks are evaluated as
# they are)
if [ "$lm_conf" = auto ]; then
  lm_conf=${speaker_conf%.yaml}_lm.yaml
  [ -f "$lm_conf" ] || lm_conf=none
fi
[ "$lm_conf" = none ] || [ -f "$lm_conf" ] || die "--lm-conf $lm_conf: no such file (none: no large-margin fine-tuning)"
[ -z "$pretrained" ] || lm_conf=none
# the speech systems (exp/<name>) and the one that fusion and cleansing use
speech_systems() { echo speaker; [ "$lm_conf" = none ] || echo speaker_lm; }
spk=$(speech_systems | tail -1)
train_cmd_prefix() {  # torchrun over GPUs and nodes, or plain avtk on a CPU
  if [ "$gpus" -gt 0 ]; then
    echo "torchrun --nproc_per_node $gpus --nnodes $nnodes --node_rank $node_rank --master_addr $master_addr \
--master_port $master_port -m avtk.cli"
  else
    echo "avtk"
  fi
}

if run_stage 0; then
  log "Stage 0: data dirs ($layout layout)"
  if [ "$layout" = seed ]; then
    [ -n "$vox2" ] && [ -n "$vox1" ] || die "stage 0 (seed layout) needs --vox2 DIR (VoxCeleb2 with wav/, frame_align/, train_all.txt) and --vox1 DIR (VoxCeleb1 with wav/, frame_align/, O_list.txt, O_trials.txt, ...)"
    avtk prepare-voxceleb seed --vox2 "$vox2" --vox1 "$vox1" data
  else
    [ -n "$vox2_dev" ] && [ -n "$vox1" ] || die "stage 0 (official layout) needs --vox2-dev DIR (VoxCeleb2 dev with aac/ and mp4/) and --vox1 DIR (VoxCeleb1 with wav/); --trials-dir DIR holds veri_test2.txt, list_test_all2.txt, list_test_hard2.txt"
    avtk prepare-voxceleb official --vox2-dev "$vox2_dev" --vox1 "$vox1" --trials-dir "${trials_dir:-$vox1}" data
  fi
  [ -n "$(sets)" ] || die "no VoxCeleb1 trial set was prepared: check the trial lists under ${trials_dir:-$vox1}"
  if [ -n "$musan" ] || [ -n "$rirs" ]; then
    avtk prepare-augment ${musan:+--musan "$musan"} ${rirs:+--rirs "$rirs"} data
  fi
  for x in $train $(sets); do utils/validate_data_dir.sh --no-feats "data/$x"; done
  stage_done 0
fi

! main_node || [ -f "data/$train/wav.scp" ] || die "data/$train/wav.scp is missing: run stage 0 first (with --vox2/--vox1 or --vox2-dev/--vox1)"

if run_stage 1; then
  log "Stage 1: fbank"
  for x in $train $(sets); do
    dir=$PWD/fbank/$x
    split_to "data/$x/wav.scp" "$dir/split$nj" wav
    $ext_cmd JOB=1:"$nj" "exp/log/fbank_$x.JOB.log" \
      avtk compute-fbank --device "$device" --write-num-frames "$dir/utt2num_frames.JOB" \
        "scp:$dir/split$nj/wav.JOB.scp" "ark,scp:$dir/raw_fbank.JOB.ark,$dir/raw_fbank.JOB.scp"
    for n in $(seq "$nj"); do cat "$dir/raw_fbank.$n.scp"; done | sort > "data/$x/feats.scp"
    for n in $(seq "$nj"); do cat "$dir/utt2num_frames.$n"; done | sort > "data/$x/utt2num_frames"
    check_count "data/$x/feats.scp" "data/$x/wav.scp"
  done
  stage_done 1
fi

if run_stage 2; then
  log "Stage 2: face frames"
  for x in $train $(sets); do
    if [ -f "data/$x/frames.scp" ] && [ ! -f "data/$x/video.scp" ]; then
      log "data/$x/frames.scp lists aligned frames already (the seed's frame_align/): nothing to do"
      continue
    fi
    [ -f "data/$x/video.scp" ] || { log "data/$x has no video.scp and no frames.scp: no faces for $x"; continue; }
    dir=$PWD/frame_align/$x
    split_to "data/$x/video.scp" "$dir/split$nj" video
    $ext_cmd JOB=1:"$nj" "exp/log/faces_$x.JOB.log" \
      avtk extract-face-frames --detector mtcnn --device "$device" --skip-bad \
        "$dir/split$nj/video.JOB.scp" "$dir" "$dir/split$nj/frames.JOB.scp"
    for n in $(seq "$nj"); do cat "$dir/split$nj/frames.$n.scp"; done | sort > "data/$x/frames.scp"
  done
  stage_done 2
fi

if run_stage 3; then
  if [ -n "$pretrained" ]; then
    log "Stage 3: import the seed's speaker model from $pretrained"
    [ -f "$pretrained/A-Vox2.model" ] || die "--pretrained $pretrained has no A-Vox2.model"
    avtk import-model --format a-vox2 "$pretrained/A-Vox2.model" "$spk_exp/avg_model.pt"
  else
    log "Stage 3: train the speaker network ($speaker_conf, $gpus GPU(s) x $nnodes node(s))"
    $(train_cmd_prefix) train --config "$speaker_conf" --train-data "data/$train" --exp "$spk_exp" \
      --val-trials "data/vox1_$cal_set/trials" $train_opts
    if [ "$lm_conf" != none ]; then
      log "Stage 3: large-margin fine-tuning of the speaker network ($lm_conf)"
      $(train_cmd_prefix) train --config "$lm_conf" --init-model "$spk_exp/avg_model.pt" --train-data "data/$train" \
        --exp exp/speaker_lm --val-trials "data/vox1_$cal_set/trials" $lm_opts
    else
      log "Stage 3: no large-margin fine-tuning (no ${speaker_conf%.yaml}_lm.yaml, or --lm-conf none)"
    fi
  fi
  stage_done 3
fi

if run_stage 4; then
  if [ -n "$pretrained" ]; then
    log "Stage 4: import the seed's face model(s) from $pretrained"
    [ -f "$pretrained/V-Vox2.model" ] || die "--pretrained $pretrained has no V-Vox2.model"
    avtk import-model --format v-vox2 "$pretrained/V-Vox2.model" "$face_exp/avg_model.pt"
    if [ -f "$pretrained/V-Glint.model" ]; then
      avtk import-model --format v-glint "$pretrained/V-Glint.model" exp/face_glint/avg_model.pt
    fi
  else
    [ -f "data/$train/frames.scp" ] || die "data/$train/frames.scp is missing: run stage 2 (official layout) or give the seed's tree with frame_align/"
    log "Stage 4: train the face network ($face_conf)"
    $(train_cmd_prefix) train --config "$face_conf" --train-data "data/$train" --exp "$face_exp" \
      --val-trials "data/vox1_$cal_set/trials" $train_opts
  fi
  stage_done 4
fi

face_systems() { echo face; [ -f exp/face_glint/avg_model.pt ] && echo face_glint; true; }

# row SET SYSTEM SCORING SCORES [--calibrated]: a line of the metrics table of exp/RESULTS.md
row() {
  [ -f "$4" ] || return 0
  avtk compute-metrics ${5:-} "$4" | awk -v set="$1" -v sys="$2" -v sc="$3" '
    /^EER/ {eer=$2} /minDCF\(p=0.01\)/ {d1=$2} /minDCF\(p=0.05\)/ {d5=$2} /^Cllr/ {cllr=$2}
    END {printf "| %s | %s | %s | %s | %s | %s | %s |\n", set, sys, sc, eer, d1, d5, (cllr == "" ? "-" : cllr)}'
}

# embed MODEL_EXP SET TABLE: $cmd JOB=1:$nj extraction of data/SET/TABLE into MODEL_EXP/emb/SET.scp
embed() {
  local exp_dir=$1 x=$2 table=$3 dir=$1/emb input=${3%.scp}
  [ "$input" = feats ] || [ "$input" = wav ] || input=frames
  local workers=0  # on a GPU, read (features: one thread) and decode (audio: 4 processes) ahead of the network
  if [ "$device" != cpu ] && [ "$input" != frames ]; then workers=4; fi
  split_to "data/$x/$table" "$dir/split$nj" "${table%.scp}_$x"
  $ext_cmd JOB=1:"$nj" "exp/log/embed_${exp_dir##*/}_$x.JOB.log" \
    avtk extract-embeddings --model "$exp_dir/avg_model.pt" --device "$device" --input-type "$input" \
      --num-workers "$workers" "scp:$dir/split$nj/${table%.scp}_$x.JOB.scp" \
      "ark,scp:$PWD/$dir/$x.JOB.ark,$PWD/$dir/$x.JOB.scp"
  for n in $(seq "$nj"); do cat "$dir/$x.$n.scp"; done | sort > "$dir/$x.scp"
  if [ "$table" = frames.scp ]; then
    for n in $(seq "$nj"); do cat "$dir/$x.$n.no_face"; done | sort > "$dir/$x.no_face"
    [ "$(cat "$dir/$x.scp" "$dir/$x.no_face" | wc -l)" -eq "$(wc -l < "data/$x/frames.scp")" ] \
      || die "$dir/$x.scp and $x.no_face do not add up to data/$x/frames.scp"
  else
    check_count "$dir/$x.scp" "data/$x/$table"
  fi
}

if run_stage 5; then
  log "Stage 5: embeddings"
  # imported seed models carry their own front end: they embed audio; trained ones read the fbank of stage 1
  speech_table=feats.scp
  [ -n "$pretrained" ] && speech_table=wav.scp
  for x in $train $(sets); do
    for s in $(speech_systems); do embed "exp/$s" "$x" "$speech_table"; done
    if [ -f "data/$x/frames.scp" ]; then
      for f in $(face_systems); do embed "exp/$f" "$x" frames.scp; done
    fi
  done
  stage_done 5
fi

if run_stage 6; then
  log "Stage 6: cosine and AS-Norm scoring"
  for sys in $(speech_systems) $(face_systems); do
    emb=exp/$sys/emb
    mkdir -p "exp/$sys/scores"
    for x in $(sets); do
      [ -f "$emb/$x.scp" ] || continue
      avtk score --allow-missing --trials "data/$x/trials" "scp:$emb/$x.scp" "exp/$sys/scores/${x}_cosine.txt"
      avtk score --allow-missing --trials "data/$x/trials" --cohort "scp:$emb/$train.scp" \
        --cohort-utt2spk "data/$train/utt2spk" --top-n "$top_n" \
        "scp:$emb/$x.scp" "exp/$sys/scores/${x}_asnorm.txt"
    done
  done
  stage_done 6
fi

if run_stage 7; then
  log "Stage 7: fusion"
  mkdir -p exp/fusion
  a=exp/$spk/scores f=exp/face/scores cal=vox1_$cal_set
  for x in $(sets); do
    [ -f "$f/${x}_cosine.txt" ] || continue
    avtk fuse --method mean --allow-missing --out "exp/fusion/${x}_mean.txt" "$a/${x}_cosine.txt" "$f/${x}_cosine.txt"
  done
  if [ -f "$f/${cal}_asnorm.txt" ]; then
    avtk fuse --method logreg --modalities audio,face --allow-missing \
      --train-scores "$a/${cal}_asnorm.txt" "$f/${cal}_asnorm.txt" --model-out exp/fusion/logreg.yaml \
      --out "exp/fusion/${cal}_logreg_self.txt" "$a/${cal}_asnorm.txt" "$f/${cal}_asnorm.txt"
    for x in $(sets); do
      [ "$x" = "$cal" ] && continue
      avtk fuse --method logreg --model exp/fusion/logreg.yaml --allow-missing --out "exp/fusion/${x}_logreg.txt" \
        "$a/${x}_asnorm.txt" "$f/${x}_asnorm.txt"
    done
  fi
  stage_done 7
fi

if run_stage 8; then
  log "Stage 8: metrics table"
  {
    echo "# VoxCeleb results"
    echo
    echo "| set | system | scoring | EER % | minDCF p=0.01 | minDCF p=0.05 | Cllr |"
    echo "|---|---|---|---|---|---|---|"
    for x in $(sets); do
      for sys in $(speech_systems) $(face_systems); do
        row "$x" "$sys" cosine "exp/$sys/scores/${x}_cosine.txt"
        row "$x" "$sys" AS-Norm "exp/$sys/scores/${x}_asnorm.txt"
      done
      row "$x" "fusion: mean (a+v)/2" cosine "exp/fusion/${x}_mean.txt"
      if [ "$x" = "vox1_$cal_set" ]; then
        row "$x" "fusion: logreg (trained on this set)" "AS-Norm" "exp/fusion/${x}_logreg_self.txt" --calibrated
      else
        row "$x" "fusion: logreg (vox1_$cal_set)" "AS-Norm" "exp/fusion/${x}_logreg.txt" --calibrated
      fi
    done
  } > exp/RESULTS.md
  cat exp/RESULTS.md
  stage_done 8
fi

if run_stage 9; then
  log "Stage 9: audio-visual cleansing of data/$train"
  mkdir -p exp/cleanse
  face_emb=()
  [ -f "exp/face/emb/$train.scp" ] && face_emb=(--face-emb "scp:exp/face/emb/$train.scp")
  avtk cleanse --audio-emb "scp:exp/$spk/emb/$train.scp" "${face_emb[@]}" \
    --out-list exp/cleanse/train_all_clean.txt --out-dir "data/${train}_clean" \
    --report exp/cleanse/report.json --hist-plot exp/cleanse/similarity.png "data/$train"
  echo >> exp/RESULTS.md
  echo "Cleansing: $(grep -c ' noisy$' exp/cleanse/train_all_clean.txt || true) of $(wc -l < exp/cleanse/train_all_clean.txt) training utterances flagged noisy (exp/cleanse/train_all_clean.txt)" >> exp/RESULTS.md
  tail -1 exp/RESULTS.md
  stage_done 9
fi

if run_stage 10; then
  if [ -n "$pretrained" ]; then
    log "Stage 10: skipped with --pretrained (retraining needs a training run)"
  else
    log "Stage 10: retrain the speaker network on data/${train}_clean"
    $(train_cmd_prefix) train --config "$speaker_conf" --train-data "data/${train}_clean" --exp exp/speaker_clean \
      --val-trials "data/vox1_$cal_set/trials" $train_opts
    main_node || log "Stage 10: node 0 embeds and scores with the retrained network (this is node $node_rank)"
    for x in $(main_node && sets); do
      embed exp/speaker_clean "$x" feats.scp
      mkdir -p exp/speaker_clean/scores
      avtk score --trials "data/$x/trials" "scp:exp/speaker_clean/emb/$x.scp" "exp/speaker_clean/scores/${x}_cosine.txt"
      noisy=$(avtk compute-metrics "exp/speaker/scores/${x}_cosine.txt" | awk '/^EER/ {print $2}')
      clean=$(avtk compute-metrics "exp/speaker_clean/scores/${x}_cosine.txt" | awk '/^EER/ {print $2}')
      echo "Retraining (stage 10), $x: speaker EER $noisy % on the full list, $clean % on the cleaned list (cosine)" >> exp/RESULTS.md
      tail -1 exp/RESULTS.md
    done
  fi
  stage_done 10
fi

if run_stage 11; then
  av=exp/av_joint
  if [ "$av_conf" = none ]; then
    log "Stage 11: no joint audio-visual embedding (--av-conf none)"
  elif [ ! -f "exp/face/emb/$train.scp" ]; then
    die "Stage 11: exp/face/emb/$train.scp is missing: the joint embedding trains on the face network's embeddings of data/$train (stage 5 embeds them when data/$train/frames.scp exists)"
  else
    log "Stage 11: the joint audio-visual embedding ($av_conf) over exp/$spk and exp/face"
    mkdir -p "$av/data/train" "$av/emb" "$av/scores"
    # training input: the speaker network's embeddings of 4 random 2 s crops per training utterance (its
    # embeddings of whole training utterances are memorised), and the face network's
    speech_table=feats.scp
    [ -n "$pretrained" ] && speech_table=wav.scp
    split_to "data/$train/$speech_table" "$av/crops/split$nj" "${speech_table%.scp}"
    $ext_cmd JOB=1:"$nj" "exp/log/av_crops.JOB.log" \
      avtk extract-embeddings --model "exp/$spk/avg_model.pt" --device "$device" --seed-crops 4 --crop-seconds 2 \
        "scp:$av/crops/split$nj/${speech_table%.scp}.JOB.scp" "ark,scp:$PWD/$av/crops/crops.JOB.ark,$PWD/$av/crops/crops.JOB.scp"
    for n in $(seq "$nj"); do cat "$av/crops/crops.$n.scp"; done | sort > "$av/data/train/audio_emb.scp"
    check_count "$av/data/train/audio_emb.scp" "data/$train/$speech_table"
    cp "data/$train/utt2spk" "$av/data/train/utt2spk"
    cp "exp/face/emb/$train.scp" "$av/data/train/face_emb.scp"
    avtk train --config "$av_conf" --train-data "$av/data/train" --exp "$av" $av_opts
    for x in $train $(sets); do
      [ -f "exp/face/emb/$x.scp" ] || continue
      avtk extract-joint-embeddings --model "$av/avg_model.pt" --face-emb "scp:exp/face/emb/$x.scp" \
        "scp:exp/$spk/emb/$x.scp" "ark,scp:$PWD/$av/emb/$x.ark,$PWD/$av/emb/$x.scp"
    done
    echo >> exp/RESULTS.md
    echo "Joint audio-visual embedding (stage 11, $av_conf over $spk and face):" >> exp/RESULTS.md
    echo >> exp/RESULTS.md
    echo "| set | system | scoring | EER % | minDCF p=0.01 | minDCF p=0.05 | Cllr |" >> exp/RESULTS.md
    echo "|---|---|---|---|---|---|---|" >> exp/RESULTS.md
    for x in $(sets); do
      [ -f "$av/emb/$x.scp" ] || continue
      avtk score --trials "data/$x/trials" "scp:$av/emb/$x.scp" "$av/scores/${x}_cosine.txt"
      avtk score --trials "data/$x/trials" --cohort "scp:$av/emb/$train.scp" --cohort-utt2spk "data/$train/utt2spk" \
        --top-n "$top_n" "scp:$av/emb/$x.scp" "$av/scores/${x}_asnorm.txt"
      row "$x" "joint audio-visual" cosine "$av/scores/${x}_cosine.txt" >> exp/RESULTS.md
      row "$x" "joint audio-visual" AS-Norm "$av/scores/${x}_asnorm.txt" >> exp/RESULTS.md
    done
    tail -5 exp/RESULTS.md
  fi
  stage_done 11
fi

log "done (node $node_rank of $nnodes)"
