"""Train a speaker (or face) network from a YAML config, on one CPU/GPU or under torchrun."""
from avtk.command import make_parser


def get_parser():
    p = make_parser(
        "Train a network with AAM-softmax on random crops of a Kaldi data dir. The YAML given by --config "
        "holds the sections model, loss, optim, scheduler, data, augment, finetune and runtime (see "
        "avtk/train/config.py for every key and its default); unknown keys are errors. Trailing `section.key=value` arguments "
        "override it, e.g. `runtime.epochs=3 optim.lr=0.002`; every key has a type and range, checked before any "
        "work. The resolved config is written to EXP/config.yaml, a checkpoint per epoch to EXP/checkpoints/, and "
        "EXP/avg_model.pt averages the last epochs. Utterances shorter than data.min_seconds are skipped and "
        "listed in EXP/train_skipped.txt. "
        "Multi-GPU / multi-node: `torchrun --nproc_per_node N [--nnodes ...] -m avtk.cli train ...`.",
        config_file=False,
    )
    p.add_argument("--config", required=True, help="training YAML (nested sections, see avtk/train/config.py)")
    p.add_argument("--train-data", required=True, help="data dir with utt2spk and feats.scp (data.input: feats) or wav.scp")
    p.add_argument("--exp", required=True, help="experiment directory")
    p.add_argument("--val-trials", help="trials file scored for a validation EER after every epoch")
    p.add_argument("--val-data", help="data dir of the validation utterances (default: the trials file's directory)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last readable checkpoint in EXP/checkpoints (an unreadable one is named and "
                        "the previous epoch's used); the config must equal the checkpoint's except for the keys of "
                        "avtk.train.config.RESUME_MAY_CHANGE (runtime.epochs, log_interval, ..., data.num_workers), "
                        "whose changes go to EXP/config_history.yaml; a validation lost to a kill is redone")
    p.add_argument("--init-model", metavar="MODEL",
                   help="fine-tune: start from the network of this avtk model file (EXP/avg_model.pt, a checkpoint, "
                        "an avtk import-model output), whose model section must equal the config's; the classifier "
                        "is new (finetune.classifier_init: random, mean or keep) and the encoder may be frozen for "
                        "the first finetune.freeze_encoder_epochs and trained at optim.encoder_lr_scale. Sets "
                        "finetune.init_model; its sha256 goes to finetune.init_checksum in EXP/config.yaml. "
                        "Applies to a fresh run: --resume continues from the checkpoint")
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    return p


def main(args):
    from avtk.io.atomic import make_dirs
    from avtk.train.config import load_config
    from avtk.train.trainer import Trainer

    make_dirs(args.exp)  # an EXP that cannot be a directory fails here, before any data is read
    cfg = load_config(args.config, args.overrides)
    Trainer(cfg, args.train_data, args.exp, args.val_trials, args.val_data, args.resume, args.init_model).run()
