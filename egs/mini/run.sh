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
id_speakers=15  # stage 11: test speakers enrolled for identification (the others are impostors)
top_n=20        # AS-Norm cohort size (the cohort is the 40 training speakers' mean embeddings)
lm_conf=conf/ecapa_mini_lm.yaml  # stage 3: large-margin fine-tuning of the speaker network (none: skip it)
speaker_nets=ecapa  # stage 3: speaker networks, comma-separated: ecapa (always), campplus, resnet221, resnet293,
                    # eres2netv2
                    # (conf/<net>_mini.yaml)
av_conf=conf/av_joint_mini.yaml  # stage 12: the joint audio-visual embedding
av_finetune_conf=none  # stage 12: also fine-tune both networks through it (conf/av_finetune_mini.yaml; none: no)
faceless=30     # stage 12: percent of the test utterances whose face frames are removed

help_message="Usage: $0 [options]
  Runs every stage by default; --stage N --stop-stage M runs stages N..M (each reads what earlier ones wrote).
  Stages:
    0  synthetic corpus, data dirs (validated) and trivial baselines (mean MFCC, raw pixels)
    1  fbank to ark/scp (\$cmd JOB=1:\$nj over split_scp splits): data/*/feats.scp, utt2num_frames
    2  face frames: align the raw frames with their landmarks (\$cmd JOB=1:\$nj) -> frame_align/, data/*/frames.scp
    3  train the speaker network (conf/ecapa_mini.yaml) -> exp/ecapa/avg_model.pt, then its large-margin
       fine-tuning (--lm-conf, avtk train --init-model exp/ecapa/avg_model.pt) -> exp/ecapa_lm/avg_model.pt;
       the later stages embed and score both, and fusion, calibration and cleansing use the fine-tuned one
    4  train the face network (conf/iresnet_mini.yaml) -> exp/iresnet/avg_model.pt
    5  extract speaker and face embeddings (\$cmd JOB=1:\$nj) -> exp/{ecapa,ecapa_lm,iresnet}/emb/
    6  cosine and AS-Norm scoring of the test and dev trials -> exp/*/scores/
    7  fusion: the seed's mean, and logistic-regression fusion/calibration trained on dev -> exp/fusion/
    8  the metrics table -> exp/RESULTS.md
    9  audio-visual cleansing of the training list -> exp/cleanse/, data/train_clean
    10 retrain the speaker network on the cleaned list and compare test EERs -> exp/ecapa_clean/
    11 speaker identification: enroll --id-speakers test speakers from 2 sessions each, identify every other
       test utterance (the remaining speakers are impostors) -> exp/identify/, a table in exp/RESULTS.md
    12 the joint audio-visual embedding (--av-conf) over the frozen speaker and face networks, against score
       fusion, on all test trials and with the face frames of --faceless % of the test utterances removed
       -> exp/av_joint/, a table in exp/RESULTS.md; with --av-finetune-conf also both networks fine-tuned
       through it -> exp/av_finetune/ (speaker_model.pt and face_model.pt embed again), two more rows
  Options: --stage --stop-stage --nj --seed --top-n (AS-Norm cohort size) --id-speakers --lm-conf (none: no LM)
    --speaker-nets (more speaker networks in stages 3, 5, 6 and 8: ecapa,campplus,resnet221,resnet293,
    eres2netv2) --av-conf
    --faceless --av-finetune-conf (none: no fine-tuning through the joint network)"

. ./path.sh
. ./cmd.sh
. utils/parse_options.sh
[ "$nj" -ge 1 ] || { echo "$0: option --nj must be >= 1, not $nj" >&2; exit 1; }
case $faceless in
  [0-9]|[1-9][0-9]|100) ;;
  *) echo "$0: option --faceless must be a percentage 0-100, not '$faceless'" >&2; exit 1 ;;
esac
for conf in "$av_conf" "$av_finetune_conf"; do
  [ "$conf" = none ] || [ -f "$conf" ] || { echo "$0: no such config file: $conf" >&2; exit 1; }
done

# the speaker systems (exp/<name>) and the one that fusion, calibration and cleansing use
speaker_systems=ecapa spk=ecapa
if [ "$lm_conf" != none ]; then speaker_systems="ecapa ecapa_lm" spk=ecapa_lm; fi
extra_nets=  # --speaker-nets beyond ecapa: trained in stage 3, embedded and scored with the others
IFS=, read -r -a nets <<< "$speaker_nets"
for net in "${nets[@]}"; do
  case $net in
    ecapa) ;;
    campplus|resnet221|resnet293|eres2netv2)
      case " $extra_nets " in *" $net "*) echo "$0: option --speaker-nets: '$net' is named twice" >&2; exit 1 ;; esac
      extra_nets="$extra_nets $net" ;;
    *) echo "$0: option --speaker-nets: unknown network '$net' (known: ecapa, campplus, resnet221, resnet293, eres2netv2)" >&2
       exit 1 ;;
  esac
done
speaker_systems="$speaker_systems$extra_nets"

log() { echo "$(date '+%Y-%m-%d %H:%M:%S') (${0##*/}:${BASH_LINENO[0]}) $*" >&2; }
# The lines of a parallel stage's output must add up to its input's.
check_count() {
  local got want
  got=$(wc -l < "$1"); want=$(wc -l < "$2")
  if [ "$got" -ne "$want" ]; then log "ERROR: $1 has $got lines but $2 has $want"; exit 1; fi
}
# embed MODEL TABLE DIR NAME [extract-embeddings options]: the embeddings of TABLE (feats.scp, or frames.scp for
# a face model) by $cmd JOB=1:$nj over split_scp splits -> DIR/NAME.scp (the utterances of a face model without
# a face: DIR/NAME.no_face); what comes out must add up to TABLE.
embed() {
  local model=$1 table=$2 dir=$3 name=$4 n
  shift 4
  mkdir -p "$dir/split$nj"
  split_scp "$table" $(for n in $(seq "$nj"); do echo "$dir/split$nj/$name.$n.scp"; done)
  $cmd JOB=1:"$nj" "$exp/log/embed_$(basename "$(dirname "$model")")_$name.JOB.log" \
    avtk extract-embeddings "$@" --model "$model" \
      "scp:$dir/split$nj/$name.JOB.scp" "ark,scp:$PWD/$dir/$name.JOB.ark,$PWD/$dir/$name.JOB.scp"
  for n in $(seq "$nj"); do cat "$dir/$name.$n.scp"; done | sort > "$dir/$name.scp"
  if [ "${table##*/}" = frames.scp ]; then
    for n in $(seq "$nj"); do cat "$dir/$name.$n.no_face"; done | sort > "$dir/$name.no_face"
    cat "$dir/$name.scp" "$dir/$name.no_face" > "$dir/$name.all"  # an embedding or "no face" for each
    check_count "$dir/$name.all" "$table"
    rm "$dir/$name.all"
  else
    check_count "$dir/$name.scp" "$table"
  fi
}

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  log "Stage 0: synthetic corpus, data dirs and trivial baselines"
  avtk make-synthetic-corpus --config conf/corpus.yaml --seed "$seed" --nj "$nj" "$corpus" "$data"
  for x in train test dev; do
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
  for x in train test dev; do
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

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  log "Stage 2: face frames aligned from the raw frames and their landmarks"
  for x in train test dev; do
    dir=$PWD/frame_align/$x
    mkdir -p "$dir/split$nj"
    split_scp "$data/$x/raw_frames.scp" $(for n in $(seq "$nj"); do echo "$dir/split$nj/raw_frames.$n.scp"; done)
    $cmd JOB=1:"$nj" "$exp/log/faces_$x.JOB.log" \
      avtk extract-face-frames --detector landmarks \
        "$dir/split$nj/raw_frames.JOB.scp" "$dir" "$dir/split$nj/frames.JOB.scp"
    for n in $(seq "$nj"); do cat "$dir/split$nj/frames.$n.scp"; done | sort > "$data/$x/frames.scp"
    check_count "$data/$x/frames.scp" "$data/$x/raw_frames.scp"
  done
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  log "Stage 3: train the speaker network"
  avtk train --config conf/ecapa_mini.yaml --train-data "$data/train" --exp "$exp/ecapa" \
    --val-trials "$data/test/trials"
  if [ "$lm_conf" != none ]; then
    log "Stage 3: large-margin fine-tuning of the speaker network ($lm_conf)"
    avtk train --config "$lm_conf" --init-model "$exp/ecapa/avg_model.pt" --train-data "$data/train" \
      --exp "$exp/ecapa_lm"
  fi
  for net in $extra_nets; do
    log "Stage 3: train the speaker network $net (conf/${net}_mini.yaml)"
    avtk train --config "conf/${net}_mini.yaml" --train-data "$data/train" --exp "$exp/$net" \
      --val-trials "$data/test/trials"
  done
fi

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  log "Stage 4: train the face network"
  avtk train --config conf/iresnet_mini.yaml --train-data "$data/train" --exp "$exp/iresnet" \
    --val-trials "$data/test/trials"
fi

if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  log "Stage 5: extract speaker embeddings ($speaker_systems)"
  for sys in $speaker_systems; do
    for x in train test dev; do
      embed "$exp/$sys/avg_model.pt" "$data/$x/feats.scp" "$exp/$sys/emb" "$x"
    done
  done
fi

if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  log "Stage 5: extract face embeddings"
  for x in train test dev; do
    embed "$exp/iresnet/avg_model.pt" "$data/$x/frames.scp" "$exp/iresnet/emb" "$x"
  done
fi

if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  log "Stage 6: cosine and AS-Norm scoring"
  for sys in $speaker_systems iresnet; do
    emb=$exp/$sys/emb
    mkdir -p "$exp/$sys/scores"
    for x in test dev; do
      # --allow-missing: trials of utterances without a face are listed in *.missing; fusion falls back to audio
      avtk score --allow-missing --trials "$data/$x/trials" --mean-from "scp:$emb/train.scp" \
        "scp:$emb/$x.scp" "$exp/$sys/scores/${x}_cosine.txt"
      avtk score --allow-missing --trials "$data/$x/trials" --mean-from "scp:$emb/train.scp" \
        --cohort "scp:$emb/train.scp" --cohort-utt2spk "$data/train/utt2spk" --top-n "$top_n" \
        --write-quality "$exp/$sys/scores/${x}_asnorm.cohort" "scp:$emb/$x.scp" "$exp/$sys/scores/${x}_asnorm.txt"
    done
  done
fi

if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 7 ]; then
  log "Stage 7: fusion and calibration"
  mkdir -p "$exp/fusion"
  a=$exp/$spk/scores f=$exp/iresnet/scores
  avtk fuse --method mean --out "$exp/fusion/test_mean.txt" "$a/test_cosine.txt" "$f/test_cosine.txt"
  avtk fuse --method logreg --modalities audio,face --train-scores "$a/dev_asnorm.txt" "$f/dev_asnorm.txt" \
    --model-out "$exp/fusion/logreg.yaml" --out "$exp/fusion/test_logreg.txt" "$a/test_asnorm.txt" "$f/test_asnorm.txt"
  avtk fuse --method logreg --modalities audio --train-scores "$a/dev_asnorm.txt" \
    --model-out "$exp/fusion/audio_calibration.yaml" --out "$exp/fusion/test_audio_calibrated.txt" "$a/test_asnorm.txt"
  # QMF: the same calibrations with quality measures (min/max of the two sides' durations and AS-Norm cohort
  # means); the fusion takes the audio cohort means only (the face's hurt on mini's 10 dev speakers)
  audio_quality=(--train-quality-data "$data/dev" --quality-data "$data/test")
  avtk fuse --method logreg --modalities audio --train-scores "$a/dev_asnorm.txt" "${audio_quality[@]}" \
    --train-cohort-stats "$a/dev_asnorm.cohort" --cohort-stats "$a/test_asnorm.cohort" \
    --model-out "$exp/fusion/audio_qmf.yaml" --out "$exp/fusion/test_audio_qmf.txt" "$a/test_asnorm.txt"
  avtk fuse --method logreg --modalities audio,face --train-scores "$a/dev_asnorm.txt" "$f/dev_asnorm.txt" \
    "${audio_quality[@]}" --train-cohort-stats "$a/dev_asnorm.cohort" - --cohort-stats "$a/test_asnorm.cohort" - \
    --model-out "$exp/fusion/qmf.yaml" --out "$exp/fusion/test_qmf.txt" "$a/test_asnorm.txt" "$f/test_asnorm.txt"
fi

if [ "$stage" -le 8 ] && [ "$stop_stage" -ge 8 ]; then
  log "Stage 8: metrics table"
  row() {  # system, scoring, scores file, [--calibrated]
    local m
    m=$(avtk compute-metrics ${4:-} "$3")
    echo "$m" | awk -v sys="$1" -v sc="$2" '
      /^EER/ {eer=$2} /minDCF\(p=0.01\)/ {d1=$2} /minDCF\(p=0.05\)/ {d5=$2} /^Cllr/ {cllr=$2} /^minCllr/ {mc=$2}
      /^actDCF\(p=0.01\)/ {a1=$2}
      END {printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", sys, sc, eer, d1, d5, mc, (cllr == "" ? "-" : cllr),
           (a1 == "" ? "-" : a1)}'
  }
  {
    echo "# Mini recipe results (test trials: $(wc -l < "$data/test/trials"))"
    echo
    echo "| system | scoring | EER % | minDCF p=0.01 | minDCF p=0.05 | minCllr | Cllr | actDCF p=0.01 |"
    echo "|---|---|---|---|---|---|---|---|"
    row "audio: mean MFCC (trivial)" "cosine" "$exp/baseline/scores_audio.txt"
    row "audio: ECAPA-TDNN C=256" "cosine" "$exp/ecapa/scores/test_cosine.txt"
    row "audio: ECAPA-TDNN C=256" "AS-Norm" "$exp/ecapa/scores/test_asnorm.txt"
    if [ "$spk" = ecapa_lm ]; then
      row "audio: ECAPA-TDNN C=256 + LM" "cosine" "$exp/ecapa_lm/scores/test_cosine.txt"
      row "audio: ECAPA-TDNN C=256 + LM" "AS-Norm" "$exp/ecapa_lm/scores/test_asnorm.txt"
    fi
    name="audio: ECAPA-TDNN C=256"
    [ "$spk" = ecapa_lm ] && name="$name + LM"
    row "$name" "AS-Norm, calibrated on dev" "$exp/fusion/test_audio_calibrated.txt" --calibrated
    row "$name" "AS-Norm, QMF on dev" "$exp/fusion/test_audio_qmf.txt" --calibrated
    for net in $extra_nets; do
      case $net in
        campplus) label="CAM++ (1.07 M)" ;;
        resnet221) label="ResNet221 w=4 (0.79 M)" ;;
        resnet293) label="ResNet293 w=4 (0.87 M)" ;;
        eres2netv2) label="ERes2NetV2 w=8 (0.71 M)" ;;
      esac
      row "audio: $label" "cosine" "$exp/$net/scores/test_cosine.txt"
      row "audio: $label" "AS-Norm" "$exp/$net/scores/test_asnorm.txt"
    done
    row "face: 16x16 pixels (trivial)" "cosine" "$exp/baseline/scores_face.txt"
    row "face: iresnet18 w=8" "cosine" "$exp/iresnet/scores/test_cosine.txt"
    row "face: iresnet18 w=8" "AS-Norm" "$exp/iresnet/scores/test_asnorm.txt"
    row "fusion: seed mean (a+v)/2" "cosine" "$exp/fusion/test_mean.txt"
    row "fusion: logistic regression (dev)" "AS-Norm, calibrated" "$exp/fusion/test_logreg.txt" --calibrated
    row "fusion: logistic regression (dev)" "AS-Norm, QMF" "$exp/fusion/test_qmf.txt" --calibrated
  } > "$exp/RESULTS.md"
  cat "$exp/RESULTS.md"
fi

if [ "$stage" -le 9 ] && [ "$stop_stage" -ge 9 ]; then
  log "Stage 9: audio-visual cleansing of the training list"
  mkdir -p "$exp/cleanse"
  avtk cleanse --audio-emb "scp:$exp/$spk/emb/train.scp" --face-emb "scp:$exp/iresnet/emb/train.scp" \
    --truth "$data/train/label_noise.txt" --corpus-root "$corpus/wav" \
    --out-list "$exp/cleanse/train_all_clean.txt" --out-dir "$data/train_clean" \
    --report "$exp/cleanse/report.json" --hist-plot "$exp/cleanse/similarity.png" "$data/train"
  python3 - "$exp/cleanse/report.json" >> "$exp/RESULTS.md" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["truth"]
print(f"\nCleansing: {t['mislabelled']} of {r['utterances']} training utterances mislabelled (injected); "
      f"{r['noisy']} flagged noisy; precision {t['precision']:.3f}, recall {t['recall']:.3f}")
PY
  tail -1 "$exp/RESULTS.md"
fi

if [ "$stage" -le 10 ] && [ "$stop_stage" -ge 10 ]; then
  log "Stage 10: retrain the speaker network on the cleaned list"
  avtk train --config conf/ecapa_mini.yaml --train-data "$data/train_clean" --exp "$exp/ecapa_clean" \
    --val-trials "$data/test/trials"
  dir=$exp/ecapa_clean/emb
  mkdir -p "$exp/ecapa_clean/scores"
  embed "$exp/ecapa_clean/avg_model.pt" "$data/test/feats.scp" "$dir" test
  avtk score --trials "$data/test/trials" "scp:$dir/test.scp" "$exp/ecapa_clean/scores/test_cosine.txt"
  avtk score --trials "$data/test/trials" "scp:$exp/ecapa/emb/test.scp" "$exp/ecapa_clean/scores/test_cosine_noisy_model.txt"
  noisy=$(avtk compute-metrics "$exp/ecapa_clean/scores/test_cosine_noisy_model.txt" | awk '/^EER/ {print $2}')
  clean=$(avtk compute-metrics "$exp/ecapa_clean/scores/test_cosine.txt" | awk '/^EER/ {print $2}')
  echo "Retraining (stage 10): ECAPA on the noisy list ($(wc -l < "$data/train/utt2spk") utts) test EER $noisy %, on the cleaned list ($(wc -l < "$data/train_clean/utt2spk") utts) $clean % (cosine, no mean subtraction)" >> "$exp/RESULTS.md"
  tail -1 "$exp/RESULTS.md"
fi

if [ "$stage" -le 11 ] && [ "$stop_stage" -ge 11 ]; then
  log "Stage 11: speaker identification among the first $id_speakers test speakers, the others impostors"
  id=$exp/identify
  mkdir -p "$id"
  # each enrolled speaker: the first utterance of each of its first two videos (two sessions); every other test
  # utterance is a probe: genuine if its speaker is enrolled, an impostor otherwise
  head -n "$id_speakers" "$data/test/spk2utt" | awk '{
      printf "%s", $1; n = 0; split("", seen)
      for (i = 2; i <= NF && n < 2; i++) { v = $i; sub(/-[^-]*$/, "", v); if (!(v in seen)) { seen[v] = 1; printf " %s", $i; n++ } }
      print "" }' > "$id/enroll.spk2utt"
  cut -d' ' -f2- "$id/enroll.spk2utt" | tr ' ' '\n' > "$id/enroll.utts"
  for sys in "$spk" iresnet; do
    m=audio; [ "$sys" = iresnet ] && m=face
    utils/filter_scp --exclude "$id/enroll.utts" "$exp/$sys/emb/test.scp" > "$id/probe_$m.scp"
    # --allow-missing: an enrollment utterance without a face is left out (a speaker without any is not enrolled)
    avtk enroll --allow-missing --spk2utt "$id/enroll.spk2utt" --mean-from "scp:$exp/$sys/emb/train.scp" \
      "scp:$exp/$sys/emb/test.scp" "ark,scp:$PWD/$id/$m.ark,$PWD/$id/$m.scp"
  done
  asnorm_a=(--cohort "scp:$exp/$spk/emb/train.scp" --cohort-utt2spk "$data/train/utt2spk" --top-n "$top_n")
  asnorm_f=(--face-cohort "scp:$exp/iresnet/emb/train.scp" --face-cohort-utt2spk "$data/train/utt2spk")
  faces=(--face-gallery "scp:$id/face.scp" --face-test "scp:$id/probe_face.scp")
  avtk identify "scp:$id/audio.scp" "scp:$id/probe_audio.scp" "$id/audio_cosine.txt"
  avtk identify "${asnorm_a[@]}" --calibration "$exp/fusion/audio_calibration.yaml" \
    "scp:$id/audio.scp" "scp:$id/probe_audio.scp" "$id/audio_calibrated.txt"
  avtk identify "scp:$id/face.scp" "scp:$id/probe_face.scp" "$id/face_cosine.txt"
  avtk identify "${faces[@]}" "scp:$id/audio.scp" "scp:$id/probe_audio.scp" "$id/fused_mean.txt"
  avtk identify "${faces[@]}" "${asnorm_a[@]}" "${asnorm_f[@]}" --calibration "$exp/fusion/logreg.yaml" \
    "scp:$id/audio.scp" "scp:$id/probe_audio.scp" "$id/fused_logreg.txt"
  aname="audio: ECAPA-TDNN C=256"
  [ "$spk" = ecapa_lm ] && aname="$aname + LM"
  idrow() {  # system, identify output, the gallery's spk2utt
    avtk compute-id-metrics "$2" --utt2spk "$data/test/utt2spk" --enrolled "$3" --json "${2%.txt}.json" |
      awk -v sys="$1" '/^probes/ {p = $2 " (" $6 ")"} /^top-1/ {t1 = $3} /^top-5/ {t5 = $3}
        /^DIR at FAR 1 %/ {d1 = $6} /^DIR at FAR 10 %/ {d10 = $6}
        /^decisions \(genuine\)/ {c = $4} /^decisions \(impostor\)/ {fa = $5}
        END {printf "| %s | %s | %s | %s | %s | %s | %s / %s |\n", sys, p, t1, t5, d1, d10, c, fa}'
  }
  {
    echo
    echo "Identification (stage 11): $id_speakers test speakers enrolled from 2 sessions each, the other $(( $(wc -l < "$data/test/spk2utt") - id_speakers )) are impostors"
    echo
    echo "| system | probes (impostor) | top-1 % | top-5 % | DIR % at FAR 1 % | DIR % at FAR 10 % | decisions: correct / false alarm % |"
    echo "|---|---|---|---|---|---|---|"
    idrow "$aname, cosine" "$id/audio_cosine.txt" "$id/audio.spk2utt"
    idrow "$aname, AS-Norm, calibrated (LLR > 0)" "$id/audio_calibrated.txt" "$id/audio.spk2utt"
    idrow "face: iresnet18 w=8, cosine" "$id/face_cosine.txt" "$id/face.spk2utt"
    idrow "fusion: seed mean (a+v)/2" "$id/fused_mean.txt" "$id/audio.spk2utt"
    idrow "fusion: logistic regression (dev), AS-Norm (LLR > 0)" "$id/fused_logreg.txt" "$id/audio.spk2utt"
  } >> "$exp/RESULTS.md"
  tail -8 "$exp/RESULTS.md"
fi

if [ "$stage" -le 12 ] && [ "$stop_stage" -ge 12 ]; then
  log "Stage 12: the joint audio-visual embedding ($av_conf) over $spk and iresnet"
  av=$exp/av_joint
  mkdir -p "$av/data/train" "$av/scores" "$av/faceless"
  # training input: the speaker network's embeddings of 8 random 2 s crops per training utterance (the whole
  # utterances are memorised by it), the face network's embeddings of the training utterances
  embed "$exp/$spk/avg_model.pt" "$data/train/feats.scp" "$av/emb" train_crops --seed-crops 8 --crop-seconds 2
  cp "$av/emb/train_crops.scp" "$av/data/train/audio_emb.scp"
  cp "$data/train/utt2spk" "$av/data/train/utt2spk"
  cp "$exp/iresnet/emb/train.scp" "$av/data/train/face_emb.scp"
  avtk train --config "$av_conf" --train-data "$av/data/train" --exp "$av"
  # --faceless % of the test utterances lose their face frames (empty frame directories), and the face network
  # embeds the test set again: those utterances are listed in faceless/face.no_face
  n=$(( $(wc -l < "$data/test/utt2spk") * faceless / 100 ))
  avtk subset-data-dir --random "$n" --seed "$seed" "$data/test" "$av/faceless/data"
  rm -rf "$av/faceless/frames"
  for u in $(cut -d' ' -f1 "$av/faceless/data/utt2spk"); do mkdir -p "$av/faceless/frames/$u"; done
  awk -v d="$PWD/$av/faceless/frames" 'NR == FNR {gone[$1]; next} ($1 in gone) {print $1, d "/" $1; next} {print}' \
    "$av/faceless/data/utt2spk" "$data/test/frames.scp" > "$av/faceless/frames.scp"
  embed "$exp/iresnet/avg_model.pt" "$av/faceless/frames.scp" "$av/faceless" face
  a=$exp/$spk f=$exp/iresnet
  # joint_scores DIR AUDIO FACE FACELESS: DIR/avg_model.pt embeds the training set (the AS-Norm cohort) and the
  # test set with all faces and without the faceless ones (AUDIO and FACE: directories of train.scp and
  # test.scp; FACELESS: the test faces that are left) -> DIR/scores/{all,faceless}_joint_{cosine,asnorm}.txt.
  # The joint network centres its inputs itself: its embeddings are scored without --mean-from.
  joint_scores() {
    local dir=$1 audio=$2 face=$3 faces cond
    mkdir -p "$dir/emb" "$dir/scores"
    avtk extract-joint-embeddings --model "$dir/avg_model.pt" --face-emb "scp:$face/train.scp" \
      "scp:$audio/train.scp" "ark,scp:$PWD/$dir/emb/joint_train.ark,$PWD/$dir/emb/joint_train.scp"
    for cond in all faceless; do
      faces=$face/test.scp
      [ "$cond" = faceless ] && faces=$4
      avtk extract-joint-embeddings --model "$dir/avg_model.pt" --face-emb "scp:$faces" \
        "scp:$audio/test.scp" "ark,scp:$PWD/$dir/emb/joint_test_$cond.ark,$PWD/$dir/emb/joint_test_$cond.scp"
      avtk score --trials "$data/test/trials" "scp:$dir/emb/joint_test_$cond.scp" "$dir/scores/${cond}_joint_cosine.txt"
      avtk score --trials "$data/test/trials" --cohort "scp:$dir/emb/joint_train.scp" \
        --cohort-utt2spk "$data/train/utt2spk" --top-n "$top_n" \
        "scp:$dir/emb/joint_test_$cond.scp" "$dir/scores/${cond}_joint_asnorm.txt"
    done
  }
  joint_scores "$av" "$a/emb" "$f/emb" "$av/faceless/face.scp"
  for cond in all faceless; do
    faces=$f/emb/test.scp
    [ "$cond" = faceless ] && faces=$av/faceless/face.scp
    # score fusion of the same faces: trials without a face fall back to the audio score (mean) or to the audio
    # calibration (logistic regression, stage 7's model)
    avtk score --allow-missing --trials "$data/test/trials" --mean-from "scp:$f/emb/train.scp" \
      "scp:$faces" "$av/scores/${cond}_face_cosine.txt"
    avtk score --allow-missing --trials "$data/test/trials" --mean-from "scp:$f/emb/train.scp" \
      --cohort "scp:$f/emb/train.scp" --cohort-utt2spk "$data/train/utt2spk" --top-n "$top_n" \
      "scp:$faces" "$av/scores/${cond}_face_asnorm.txt"
    avtk fuse --method mean --allow-missing --trials "$data/test/trials" --out "$av/scores/${cond}_mean.txt" \
      "$a/scores/test_cosine.txt" "$av/scores/${cond}_face_cosine.txt"
    avtk fuse --model "$exp/fusion/logreg.yaml" --allow-missing --trials "$data/test/trials" \
      --out "$av/scores/${cond}_logreg.txt" "$a/scores/test_asnorm.txt" "$av/scores/${cond}_face_asnorm.txt"
  done
  ft=$exp/av_finetune
  if [ "$av_finetune_conf" != none ]; then
    # the speaker and face networks fine-tuned through the joint network (data.input: av), then each embeds the
    # sets again with its fine-tuned copy (ft/speaker_model.pt, ft/face_model.pt) for ft/avg_model.pt
    avtk train --config "$av_finetune_conf" --train-data "$data/train" --exp "$ft" \
      "finetune.speaker_model=$a/avg_model.pt" "finetune.face_model=$f/avg_model.pt"
    for x in train test; do
      embed "$ft/speaker_model.pt" "$data/$x/feats.scp" "$ft/audio" "$x"
      embed "$ft/face_model.pt" "$data/$x/frames.scp" "$ft/face" "$x"
    done
    embed "$ft/face_model.pt" "$av/faceless/frames.scp" "$ft/face" faceless
    joint_scores "$ft" "$ft/audio" "$ft/face" "$ft/face/faceless.scp"
  fi
  eer() { avtk compute-metrics "$1" | awk '/^EER/ {e = $2} /minDCF\(p=0.01\)/ {d = $2} END {printf "%s | %s", e, d}'; }
  avrow() {  # system, scoring, scores file of all faces, of the faceless condition
    echo "| $1 | $2 | $(eer "$3") | $(eer "$4") |"
  }
  aname="audio: ECAPA-TDNN C=256"
  [ "$spk" = ecapa_lm ] && aname="$aname + LM"
  {
    echo
    echo "Joint audio-visual embedding (stage 12): test trials with all faces, and with the face frames of" \
      "$faceless % of the test utterances removed ($(wc -l < "$av/faceless/face.no_face") utterances," \
      "$(awk 'NR == FNR {gone[$1]; next} ($1 in gone) || ($2 in gone)' "$av/faceless/face.no_face" "$data/test/trials" | wc -l)" \
      "of $(wc -l < "$data/test/trials") trials without a face on one side or both)"
    echo
    echo "| system | scoring | EER % (all faces) | minDCF p=0.01 | EER % ($faceless % faceless) | minDCF p=0.01 |"
    echo "|---|---|---|---|---|---|"
    avrow "$aname" "cosine" "$a/scores/test_cosine.txt" "$a/scores/test_cosine.txt"
    avrow "face: iresnet18 w=8 (trials with both faces)" "cosine" "$av/scores/all_face_cosine.txt" "$av/scores/faceless_face_cosine.txt"
    avrow "fusion: seed mean (a+v)/2, audio alone without a face" "cosine" "$av/scores/all_mean.txt" "$av/scores/faceless_mean.txt"
    avrow "fusion: logistic regression (dev), audio calibration without a face" "AS-Norm, calibrated" \
      "$av/scores/all_logreg.txt" "$av/scores/faceless_logreg.txt"
    avrow "joint audio-visual embedding" "cosine" "$av/scores/all_joint_cosine.txt" "$av/scores/faceless_joint_cosine.txt"
    avrow "joint audio-visual embedding" "AS-Norm" "$av/scores/all_joint_asnorm.txt" "$av/scores/faceless_joint_asnorm.txt"
    if [ "$av_finetune_conf" != none ]; then
      avrow "joint, networks fine-tuned through it ($av_finetune_conf)" "cosine" "$ft/scores/all_joint_cosine.txt" \
        "$ft/scores/faceless_joint_cosine.txt"
      avrow "joint, networks fine-tuned through it" "AS-Norm" "$ft/scores/all_joint_asnorm.txt" \
        "$ft/scores/faceless_joint_asnorm.txt"
    fi
  } >> "$exp/RESULTS.md"
  tail -10 "$exp/RESULTS.md"
fi

log "done"
