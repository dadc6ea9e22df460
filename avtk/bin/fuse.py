"""Fuse the scores of several modalities (mean, weighted, z-norm mean, or calibrated logistic regression)."""
import logging
import os

import numpy as np

from avtk.calibration import METHODS, FusionModel, quality_label, quality_spec, train_model
from avtk.command import make_parser, number
from avtk.errors import AvtkError
from avtk.fusion import fallback_counts, read_aligned, write_scores
from avtk.quality import DURATION_CAP, FRAMES_CAP

log = logging.getLogger(__name__)


def get_parser():
    p = make_parser(
        "Fuse scores files of the same trials, one per modality (lines `enroll test score [target|nontarget]`, "
        "same trials order; a trial a modality lacks is a line left out of its file, matched by enroll/test). "
        "Methods: mean = the seed's average of raw scores; weighted = sum of w_i s_i; zmean = mean of "
        "z-normalised scores (mean/std of the --train-scores development scores when given, else of the "
        "scores being fused); logreg = logistic-regression fusion trained on labelled development scores "
        "(--train-scores), whose output is a calibrated natural-log LLR. A trial missing a modality gets, for "
        "logreg, the calibration trained for the modalities it has (each single modality's own calibration), "
        "for the other methods the weighted mean of its available scores times the sum of the weights. "
        "Quality-measure functions (QMF, logreg only): with --train-quality-data (durations), "
        "--train-cohort-stats (AS-Norm cohort means from avtk score --write-quality) and --face-frames, each "
        f"calibration also weighs the min and max over the trial's two sides of each measure (durations capped "
        f"at {DURATION_CAP:g} s, face frames at {FRAMES_CAP:g}); the same measures of the trials fused come from "
        "--quality-data and --cohort-stats. "
        "Writes the fused scores in trials order, with labels when known."
    )
    p.add_argument("scores", nargs="+", help="one scores file per modality")
    p.add_argument("--out", required=True, help="output fused scores file")
    p.add_argument("--method", choices=METHODS,
                   help="fusion method (required unless --model gives it)")
    p.add_argument("--weights", help="weighted: comma-separated weights, one per input, e.g. 0.6,0.4")
    p.add_argument("--modalities",
                   help="comma-separated modality names, one per input (default: the input file names "
                        "without extension; a --model's names when applying one)")
    p.add_argument("--trials",
                   help="trials file giving the order (and labels) of the output; default: the union of the "
                        "inputs' trials in their order")
    p.add_argument("--train-scores", nargs="+", metavar="DEV_SCORES",
                   help="development scores files, one per modality in the order of the inputs, with labels "
                        "(or labels from --train-trials): trains logreg and gives zmean its statistics; "
                        "follow the list with another option (e.g. --out) before the input files")
    p.add_argument("--train-trials", help="trials file with labels for --train-scores files that have none")
    p.add_argument("--map-paths", action="store_true",
                   help="trials keys are relative wav paths (seed style): map them to utterance ids")
    p.add_argument("--prior", type=number(0, 1, low_open=True, high_open=True), default=0.5,
                   help="logreg: effective target prior of the training objective")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model-out", help="write the fusion model (YAML; JSON if named *.json)")
    model.add_argument("--model", help="apply a fusion model written by --model-out instead of training one")
    p.add_argument("--allow-missing", action="store_true",
                   help="leave out (with a warning) trials that no input scores, instead of failing")
    q = p.add_argument_group("quality measures (QMF calibration; logreg)")
    q.add_argument("--train-quality-data", metavar="DIR",
                   help="data dir of the --train-scores trials' utterances: their durations (utt2dur, else "
                        "utt2num_frames at 100 per second) become a quality measure of the model")
    q.add_argument("--train-cohort-stats", nargs="+", metavar="FILE",
                   help="per-utterance AS-Norm cohort means of the --train-scores trials (avtk score "
                        "--write-quality), one file per modality in the order of the inputs ('-' for a modality "
                        "without): a quality measure of each modality; follow the list with another option")
    q.add_argument("--face-frames", metavar="MODALITY",
                   help="count each utterance's face frames (frames.scp of --train-quality-data and "
                        "--quality-data) as a quality measure of MODALITY (e.g. face)")
    q.add_argument("--quality-data", metavar="DIR",
                   help="data dir of the fused trials' utterances, for a model with durations or face frames")
    q.add_argument("--cohort-stats", nargs="+", metavar="FILE",
                   help="per-utterance AS-Norm cohort means of the fused trials (avtk score --write-quality), one "
                        "file per modality in the order of the inputs ('-' for a modality without), for a model "
                        "with cohort means; follow the list with another option")
    return p


def _names(args, n):
    if args.modalities:
        names = [x.strip() for x in args.modalities.split(",")]
        if len(names) != n or len(set(names)) != n or not all(names):
            raise AvtkError(f"--modalities {args.modalities!r}: need {n} distinct names, one per input")
        return names
    names = [os.path.splitext(os.path.basename(p))[0] for p in args.scores]
    return names if len(set(names)) == n else [f"input{i + 1}" for i in range(n)]


def _weights(text, n):
    try:
        weights = [float(x) for x in text.split(",")]
    except ValueError:
        raise AvtkError(f"--weights {text!r}: not comma-separated numbers") from None
    if len(weights) != n or not all(np.isfinite(weights)):
        raise AvtkError(f"--weights {text!r}: need {n} finite weights, one per input")
    return weights


def _quality_specs(args, names):
    """The quality measures a model trained from the options takes (`quality_spec` entries), checked."""
    m = len(names)
    specs = []
    if args.train_quality_data:
        specs.append(quality_spec("duration"))
    if args.train_cohort_stats:
        if len(args.train_cohort_stats) != m:
            raise AvtkError(f"--train-cohort-stats: got {len(args.train_cohort_stats)} files for {m} inputs (one "
                            "per modality, in the same order)")
        specs += [quality_spec("cohort_mean", name) for name, path in zip(names, args.train_cohort_stats)
                  if path != "-"]
    if args.face_frames:
        if args.face_frames not in names:
            raise AvtkError(f"--face-frames {args.face_frames}: not one of the modalities ({', '.join(names)})")
        if not args.train_quality_data:
            raise AvtkError("--face-frames counts the frames of --train-quality-data's frames.scp: give it")
        specs.append(quality_spec("face_frames", args.face_frames))
    if specs and args.method != "logreg":
        raise AvtkError(f"quality measures (--train-quality-data, --train-cohort-stats, --face-frames) calibrate "
                        f"--method logreg, not {args.method}")
    return specs


def read_quality(specs, data, names, data_dir, cohort_files, opts, where):
    """{quality_label: (n, 2) sides} of the aligned trials `data` for the measures `specs`.

    data_dir: the data dir of durations and face frames; cohort_files: one cohort-means file per modality;
    opts: the names of the options giving them, for messages; where(i): the place of trial i. A measure of a
    modality is needed on the trials that modality scored, the duration on every trial scored at all."""
    from avtk.data import datadir
    from avtk.quality import durations, face_frame_counts, read_cohort_means, trial_sides

    if cohort_files and len(cohort_files) != len(names):
        raise AvtkError(f"{opts[1]}: got {len(cohort_files)} files for {len(names)} inputs (one per modality, in "
                        "the same order; '-' for one without)")
    avail = ~np.isnan(data.scores)
    dd = None
    out = {}
    for q in specs:
        label = quality_label(q)
        if q["measure"] in ("duration", "face_frames"):
            if not data_dir:
                raise AvtkError(f"the model takes the quality measure {label}: give {opts[0]}")
            dd = dd or datadir.load(data_dir)
        needed = avail.any(1) if q["modality"] is None else avail[:, names.index(q["modality"])]
        if q["measure"] == "duration":
            values, source = durations(dd)
        elif q["measure"] == "face_frames":
            utts = dict.fromkeys(u for i in np.flatnonzero(needed) for u in (data.enroll[i], data.test[i]))
            values, source = face_frame_counts(dd, utts)
        else:
            if not cohort_files:
                raise AvtkError(f"the model takes the quality measure {label}: give {opts[1]}")
            source = cohort_files[names.index(q["modality"])]
            if source == "-":
                raise AvtkError(f"the model takes the quality measure {label}: {opts[1]} gives '-' (none) for "
                                f"{q['modality']}")
            values = read_cohort_means(source)
        out[label] = trial_sides(values, data.enroll, data.test, needed, source, where)
    used = {q["measure"] for q in specs}
    if data_dir and not used & {"duration", "face_frames"}:
        raise AvtkError(f"{opts[0]} {data_dir}: the model takes no durations or face frames")
    for name, path in zip(names, cohort_files or []):
        if path != "-" and quality_label(quality_spec("cohort_mean", name)) not in out:
            raise AvtkError(f"{opts[1]}: {path} gives cohort means of {name}, which the model does not take "
                            "(give '-' for it)")
    if specs:
        log.info("quality measures: %s", ", ".join(out))
    return out


def _trial_place(trials_path, data):
    def where(i):
        return f"{trials_path}:{data.lineno[i]}" if data.lineno else f"trial {i + 1}"
    return where


def _model(args, names):
    m = len(args.scores)
    if args.model:
        for given, opt in ((args.weights, "--weights"), (args.train_scores, "--train-scores"),
                           (args.train_trials, "--train-trials"), (args.train_quality_data, "--train-quality-data"),
                           (args.train_cohort_stats, "--train-cohort-stats"), (args.face_frames, "--face-frames")):
            if given:
                raise AvtkError(f"{opt} builds a model; --model {args.model} applies a saved one: give one")
        model = FusionModel.load(args.model)
        if args.method and args.method != model.method:
            raise AvtkError(f"--method {args.method} but {args.model} is a {model.method} model")
        if len(model.modalities) != m:
            raise AvtkError(f"{args.model}: the model fuses {len(model.modalities)} modalities "
                            f"({', '.join(model.modalities)}), got {m} scores files")
        if args.modalities and names != model.modalities:
            raise AvtkError(f"--modalities {','.join(names)} differ from {args.model}'s "
                            f"{','.join(model.modalities)}")
        for name, path in zip(model.modalities, args.scores):
            log.info("%s <- %s", name, path)
        return model
    if not args.method:
        raise AvtkError("give --method (mean, weighted, zmean, logreg) or --model")
    specs = _quality_specs(args, names)
    if not 0 < args.prior < 1:
        raise AvtkError(f"--prior {args.prior}: must be in (0, 1)")
    weights = _weights(args.weights, m) if args.weights else None
    if args.weights and args.method != "weighted":
        raise AvtkError(f"--weights applies to --method weighted, not {args.method}")
    if args.method == "logreg" and not args.train_scores:
        raise AvtkError("--method logreg needs labelled development scores (--train-scores) or --model")
    dev = None
    if args.train_scores and args.method in ("zmean", "logreg"):
        if len(args.train_scores) != m:
            raise AvtkError(f"--train-scores: got {len(args.train_scores)} files for {m} inputs "
                            f"(one per modality, in the same order)")
        dev = read_aligned(args.train_scores, args.train_trials, args.map_paths)
        if args.method == "logreg" and dev.labels is None:
            raise AvtkError(f"{args.train_scores[0]}: development scores need target|nontarget labels "
                            f"(in the files or from --train-trials)")
        log.info("training %s on %d development trials", args.method, len(dev.enroll))
    elif args.train_scores:
        log.warning("--train-scores is not used by --method %s", args.method)
    if args.method == "zmean" and dev is None:
        log.info("zmean: normalising each modality by the mean/std of the scores being fused")
        return None  # estimated on the inputs, once they are read
    quality = None
    if specs:
        quality = read_quality(specs, dev, names, args.train_quality_data, args.train_cohort_stats,
                               ("--train-quality-data", "--train-cohort-stats"),
                               _trial_place(args.train_trials or args.train_scores[0], dev))
    return train_model(args.method, names, None if dev is None else dev.scores,
                       None if dev is None else dev.labels, weights, args.prior, specs, quality)


def _check_model_out(args):
    """--model-out must not name --out or an input file: one of them would be written over the other."""
    if not args.model_out:
        return
    inputs = [*args.scores, *(args.train_scores or []), *(args.cohort_stats or []),
              *(args.train_cohort_stats or []), args.trials, args.train_trials]
    for opt, path in [("--out", args.out)] + [("an input", p) for p in inputs if p and p != "-"]:
        if os.path.abspath(path) == os.path.abspath(args.model_out):
            raise AvtkError(f"--model-out {args.model_out} is also {opt} ({path}): one file would be written over "
                            "the other")


def main(args):
    _check_model_out(args)
    names = _names(args, len(args.scores))
    model = _model(args, names)
    data = read_aligned(args.scores, args.trials, args.map_paths)
    if model is None:
        model = train_model("zmean", names, data.scores)
    quality = None
    if model.quality or args.quality_data or args.cohort_stats:
        quality = read_quality(model.quality, data, model.modalities, args.quality_data, args.cohort_stats,
                               ("--quality-data", "--cohort-stats"), _trial_place(args.trials or args.scores[0], data))
    if args.model_out:
        model.save(args.model_out)
        log.info("wrote %s model to %s", model.method + (" (QMF)" if model.quality else ""), args.model_out)
    fused, avail = model.apply(data.scores, quality)
    counts = fallback_counts(avail, model.modalities)
    keep = ~np.isnan(fused)
    if counts["none"]:
        i = int(np.argmax(~keep))
        where = f"{args.trials}:{data.lineno[i]}" if data.lineno else "trial"
        if not args.allow_missing:
            raise AvtkError(f"{where}: trial {data.enroll[i]} {data.test[i]} has no score in any input "
                            f"({counts['none']} such trials; --allow-missing leaves them out)")
        log.warning("%d trials have no score in any input and are left out (first: %s %s, %s)",
                    counts["none"], data.enroll[i], data.test[i], where)
    idx = np.flatnonzero(keep)
    labels = None if data.labels is None else data.labels[idx]
    write_scores(args.out, [data.enroll[i] for i in idx], [data.test[i] for i in idx], fused[idx], labels)
    partial = "".join(f", {c} fell back to {k} only" for k, c in counts.items() if k not in ("all", "none"))
    log.info("fused %d trials with %s into %s: %d with every modality%s", len(idx), model.method,
             args.out, counts["all"], partial)
    return 0
