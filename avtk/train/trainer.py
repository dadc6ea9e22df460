"""The training loop: AAM-softmax classification of speakers (or faces) on random crops.

One process trains on its own; under torchrun every rank trains on its shard and DDP averages gradients.
Each epoch ends with a checkpoint of everything that changes (model, loss, optimiser, scheduler, AMP scaler,
sampler position, RNG states), a validation EER, and an updated avg_model.pt.
"""
import copy
import logging
import os
import sys
import time

import numpy as np
import torch

from avtk.errors import AvtkError
from avtk.io.atomic import make_dirs
from avtk.train import checkpoint as ckpt
from avtk.train import finetune
from avtk.train.config import DEFAULTS, RESUME_MAY_CHANGE, flatten, save_config
from avtk.train.data import Failed, ShardedBatches, collate, make_dataset
from avtk.train.distributed import setup, teardown
from avtk.train.schedule import learning_rate

log = logging.getLogger(__name__)


def _checksum(module):
    import hashlib

    h = hashlib.sha1()
    for name, tensor in sorted(module.named_parameters()):  # BN statistics stay per rank until saved
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _seed_everything(seed):
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _optimizer(cfg, params):
    """Adam or SGD of optim.* over `params` (parameters, or groups: avtk.train.finetune.param_groups)."""
    o = cfg["optim"]
    if o["name"] == "adam":
        return torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"])
    return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"], weight_decay=o["weight_decay"])


def _augmenter(cfg):
    a = cfg["augment"]
    if _speech_input(cfg) != "wav" or not a["wave"]:
        return None
    from avtk.augment import WaveAugment

    return WaveAugment(noise_dir=a["noise_dir"], music_dir=a["music_dir"], speech_dir=a["speech_dir"], rir_dir=a["rir_dir"])


def _speech_input(cfg):
    """feats or wav: the speech input of a speech network, or of the one an audio-visual network fine-tunes."""
    return cfg["data"]["speech_input"] if cfg["data"]["input"] == "av" else cfg["data"]["input"]


class Trainer:
    def __init__(self, cfg, train_data, exp, val_trials=None, val_data=None, resume=False, init_model=None):
        self.cfg, self.exp, self.resume = cfg, exp, resume
        # --init-model (or finetune.init_model) starts a fresh run only; a resumed one loads its checkpoint
        self.init_model = finetune.record_init(cfg, init_model)
        fresh = not (resume and ckpt.epochs_saved(exp))
        if fresh:
            finetune.check_needs_model(cfg)
            for key in ("init_model", "speaker_model", "face_model"):
                if cfg["finetune"][key] is not None and os.path.isfile(cfg["finetune"][key]):
                    ckpt.check_not_run_file(exp, f"finetune.{key}", cfg["finetune"][key])
        rt = cfg["runtime"]
        self.dist = setup(rt["device"], rt["dist_timeout_minutes"])
        self.device = self.dist.device
        if rt["threads"]:
            torch.set_num_threads(rt["threads"])
        self.amp = rt["amp"] if self.device.type == "cuda" else "none"
        if rt["amp"] != "none" and self.amp == "none":
            log.info("runtime.amp=%s needs a GPU; training in fp32 on %s", rt["amp"], self.device)
        _seed_everything(rt["seed"])
        self.val_trials = val_trials
        self.val_data = val_data or (os.path.dirname(val_trials) if val_trials else None)

        from avtk.models import build_loss, build_network
        from avtk.models.losses import MarginScheduler
        from avtk.models.speaker_net import TrainModule

        finetune.joint_networks(cfg)  # data.input av: model.speaker_net and face_net from their files
        self.net = build_network(cfg["model"])
        frontend = getattr(getattr(self.net, "speaker", None) or self.net, "frontend", None)
        self.dataset = make_dataset(train_data, cfg, rt["seed"], augment=_augmenter(cfg),
                                    image_size=getattr(self.net, "input_size", None),
                                    frames_of=getattr(frontend, "num_frames", None))
        if val_trials:
            self._check_validation_data()
        # the classes: speakers, times the speeds with speed perturbation (avtk.augment.speed_speakers)
        from avtk.augment import speed_speakers

        self.speakers = speed_speakers(self.dataset.speakers, getattr(self.dataset, "speeds", ()))
        dim = self.dataset.feature_dim()
        if cfg["data"]["input"] == "embeddings":
            enc, got = self.net.encoder, self.dataset.dims()
            wrong = [f"{train_data}/{name}_emb.scp holds {n}-dimensional embeddings but model.encoder_args."
                     f"{name}_dim is {want}" for name, n, want in (("audio", got[0], enc.audio_dim),
                                                                    ("face", got[1], enc.face_dim)) if n != want]
            if wrong:
                raise AvtkError("; ".join(wrong))
        elif dim is not None and getattr(self.net, "feature_dim", None) not in (None, dim):
            raise AvtkError(f"{train_data}/feats.scp has {dim}-dimensional features but the model "
                            f"({cfg['model']['encoder']}) expects {self.net.feature_dim}")
        if fresh and cfg["data"]["input"] == "av":
            finetune.load_joint_networks(self.net, cfg)
        if fresh and hasattr(self.net, "set_means"):  # an audio-visual network centres by the training means
            self.net.set_means(*self._joint_means())
        l = cfg["loss"]
        self.loss = build_loss(l["name"], embed_dim=self.net.encoder.embed_dim, num_classes=len(self.speakers),
                               margin=l["margin"], scale=l["scale"], subcenters=l["subcenters"])
        self.margins = MarginScheduler(l["margin"], l["margin_warmup_start"], l["margin_warmup_epochs"])
        self.module = TrainModule(self.net, self.loss).to(self.device)
        if fresh and self.init_model:
            self._init_from_model()
        elif fresh and cfg["data"]["input"] == "av" and cfg["finetune"]["classifier_init"] != "random":
            self._init_classifier()
        self.optimizer = _optimizer(cfg, finetune.param_groups(self.net, self.loss, cfg))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.batches = ShardedBatches(len(self.dataset), cfg["data"]["batch_size"], self.dist.rank, self.dist.world, rt["seed"])
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.batches, collate_fn=collate, num_workers=cfg["data"]["num_workers"],
            pin_memory=self.device.type == "cuda",
            persistent_workers=cfg["data"]["num_workers"] > 0,  # workers (and their source caches) live on
        )
        self.ddp = self.module
        if self.dist.initialized:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        self.start_epoch = 1
        self.resume_changes = {}
        self._last_batch = None  # a DDP rank's stand-in for a batch it cannot read (see _epoch)

    # ----------------------------------------------------------------------------------- state

    def _joint_means(self, net=None):
        """The training means an audio-visual network centres by: of the embedding tables, or (data.input av)
        of its (or `net`'s) speaker and face networks' embeddings of the training data (finetune.joint_means)."""
        if self.cfg["data"]["input"] != "av":
            return self.dataset.means()
        t0 = time.time()
        net = (net or self.net).to(self.device)
        means = finetune.joint_means(net, self.dataset, lambda c: self._features(c, None, 0, False),
                                     self.cfg["data"]["batch_size"], self.cfg["data"]["num_workers"],
                                     self.cfg["finetune"]["classifier_init_utts"], self.cfg["runtime"]["seed"])
        log.info("audio-visual: centring means of the speaker and face networks' embeddings (%.1f s)", time.time() - t0)
        return means

    def _init_classifier(self, blob=None):
        """The classifier as finetune.classifier_init says (the class means are computed by rank 0 alone: DDP
        copies its weights to the other ranks at start)."""
        ft = self.cfg["finetune"]
        how = ft["classifier_init"]
        if how == "keep":
            if blob is None:
                raise AvtkError("finetune.classifier_init = 'keep' needs finetune.init_model (a model file with a "
                                "classifier of these classes); use mean or random")
            finetune.keep_classifier(self.loss, blob, self.speakers, self.init_model)
        elif how == "mean" and self.dist.main:
            t0 = time.time()
            means, counts = finetune.class_means(
                self.net, self.dataset, len(self.speakers), lambda crops: self._features(crops, None, 0, False),
                self.device, self.cfg["data"]["batch_size"], self.cfg["data"]["num_workers"],
                ft["classifier_init_utts"], self.cfg["runtime"]["seed"])
            finetune.set_mean_classifier(self.loss, means, counts)
            log.info("classifier: the mean embeddings of %d crops of %d classes (%.1f s)", int(counts.sum()),
                     int((counts > 0).sum()), time.time() - t0)

    def _init_from_model(self):
        """Fine-tuning: the network from finetune.init_model, the classifier as finetune.classifier_init says."""
        ft = self.cfg["finetune"]
        blob = finetune.load_network(self.net, self.cfg, self.init_model)
        how = ft["classifier_init"]
        self._init_classifier(blob)
        log.info("fine-tuning from %s (sha256 %s): network loaded, classifier %s%s%s", self.init_model,
                 ft["init_checksum"], {"random": "random", "mean": "from class means", "keep": "kept"}[how],
                 f", encoder frozen for {ft['freeze_encoder_epochs']} epoch(s)" if ft["freeze_encoder_epochs"] else "",
                 f", encoder lr x {self.cfg['optim']['encoder_lr_scale']:g}"
                 if self.cfg["optim"]["encoder_lr_scale"] != 1 else "")

    def _check_validation_data(self):
        """The validation trials and data, checked at start-up rather than after the first epoch: labelled,
        both target and nontarget trials, and every trial utterance in the validation data."""
        from avtk.data import datadir
        from avtk.data.trials import read_trials
        from avtk.io.audio import read_wav_scp

        trials = read_trials(self.val_trials)
        if trials.labels is None:
            raise AvtkError(f"{self.val_trials}: validation trials need target/nontarget labels")
        targets = int(trials.labels.sum())
        if targets in (0, len(trials)):
            raise AvtkError(f"{self.val_trials}: all {len(trials)} trials are {'target' if targets else 'nontarget'}; "
                            "a validation EER needs both target and nontarget trials")
        kind = self.cfg["data"]["input"]
        if kind in ("embeddings", "av"):
            raise AvtkError(f"--val-trials {self.val_trials}: an audio-visual network has no validation during "
                            "training; embed the trials' utterances with avtk extract-joint-embeddings and score "
                            "them")
        name = {"feats": "feats.scp", "wav": "wav.scp", "frames": "frames.scp"}[kind]
        dd = datadir.load(self.val_data)
        have = read_wav_scp(self.val_data) if kind == "wav" else (dd.table(name) or {})
        missing = sorted((set(trials.enroll) | set(trials.test)) - set(have))
        if missing:
            raise AvtkError(f"{self.val_trials}: {len(missing)} trial utterances are not in {dd.file(name)}, "
                            f"e.g. {missing[0]}")

    def _resume_state(self):
        """(path, state) of the checkpoint to resume from, chosen on rank 0 (the last readable one) and the same
        on every rank; (None, None) without one. Its config must equal this run's but for RESUME_MAY_CHANGE:
        every key that differs is named, and a refused change is an AvtkError before anything is written."""
        found, state = None, None
        if self.dist.main:
            try:
                path, state = ckpt.load_last(self.exp)
                found = ("ok", path)
            except AvtkError as err:
                found = ("error", str(err))
        kind, path = self.dist.broadcast(found)
        if kind == "error":
            raise AvtkError(path)
        if path is None:
            return None, None
        state = state if self.dist.main else ckpt.load(path)
        old_ft, ft = state["config"].get("finetune") or {}, self.cfg["finetune"]
        if ft["init_model"] is None and old_ft.get("init_model"):  # resumed without --init-model: the run's own
            ft["init_model"], ft["init_checksum"] = old_ft["init_model"], old_ft.get("init_checksum")
        old, new = flatten(state["config"]), flatten(self.cfg)
        changed = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
        refused = [k for k in changed if k not in RESUME_MAY_CHANGE]
        if refused:
            what = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in sorted(changed))
            network = " The network (model.*) cannot change." if any(k.startswith("model.") for k in refused) else ""
            raise AvtkError(f"--resume: this config differs from that of {path} in {what}.{network} On resume only "
                            f"these may change: {', '.join(RESUME_MAY_CHANGE)}; start a new experiment for the rest")
        if state["speakers"] != self.speakers:
            raise AvtkError(f"{path} was trained on other speakers than {self.dataset.data_dir}")
        self.resume_changes = {k: {"from": a, "to": b} for k, (a, b) in sorted(changed.items())}
        return path, state

    def _restore(self, path, state):
        """Load a checkpoint's weights, optimiser and scaler; the epoch after its own comes next."""
        try:
            self.net.load_state_dict(state["model"])
            self.loss.load_state_dict(state["loss"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise AvtkError(f"{path}: does not fit this network ({str(err).splitlines()[0]})") from None
        self.start_epoch = state["epoch"] + 1
        log.info("resumed from %s; continuing at epoch %d", path, self.start_epoch)

    def _set_rng(self, state):
        """This rank's RNG states from the checkpoint (rank 0's when it was saved by another number of ranks)."""
        ranks = state.get("rng_ranks")
        if ranks and len(ranks) == self.dist.world:
            ckpt.set_rng_state(ranks[self.dist.rank], self.device)
            return
        if ranks:
            log.warning("the checkpoint was saved by %d ranks, this run has %d: every rank takes rank 0's RNG state",
                        len(ranks), self.dist.world)
        ckpt.set_rng_state(state["rng"], self.device)

    def _record_resume(self, path):
        """Append this resume's config changes to EXP/config_history.yaml (EXP/config.yaml stays the record of
        the run as started; each checkpoint holds the config it was trained with)."""
        if not self.resume_changes:
            return
        import yaml

        from avtk.io.atomic import atomic_open

        history_path = os.path.join(self.exp, "config_history.yaml")
        history = []
        if os.path.exists(history_path):
            with open(history_path, encoding="utf-8") as f:
                history = yaml.safe_load(f) or []
        history.append({"resumed_at_epoch": self.start_epoch, "checkpoint": path,
                        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "changes": self.resume_changes})
        with atomic_open(history_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(history, f, sort_keys=False)
        log.info("--resume with config changes (recorded in %s): %s", history_path,
                 "; ".join(f"{k}: {c['from']!r} -> {c['to']!r}" for k, c in self.resume_changes.items()))

    def _write_skipped(self):
        """EXP/train_skipped.txt: the ids of the training utterances the dataset skipped (WARNING and count);
        EXP/train_no_face.txt: those an audio-visual network trains without a face (its audio branch)."""
        from avtk.io.atomic import atomic_open

        skipped = self.dataset.skipped
        no_face = getattr(self.dataset, "no_face", [])
        for name, ids, what in (
                ("train_skipped.txt", skipped, f"skipped %d of %d training utterances {self.dataset.skip_reason}"),
                ("train_no_face.txt", no_face, "%d of %d training utterances have no face: they train the audio "
                                               "branch only")):
            path = os.path.join(self.exp, name)
            if not ids:
                if os.path.exists(path):
                    os.remove(path)
                continue
            with atomic_open(path, "w", encoding="utf-8") as f:
                f.writelines(f"{u}\n" for u in ids)
            total = len(self.dataset) + (len(skipped) if ids is skipped else 0)
            log.warning(what + " (ids in %s)", len(ids), total, path)

    def _snapshot(self):
        """Copies (on the device, no host sync) of the weights, loss, optimiser and scaler states: the last good
        state, should the log interval starting now have a non-finite loss (finiteness is checked once per
        interval, so by then the weights have been updated with the bad gradients)."""
        return copy.deepcopy({"model": self.net.state_dict(), "loss": self.loss.state_dict(),
                              "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()})

    def _save(self, epoch, rng, path=None, state=None):
        """Checkpoint of epoch `epoch`: the live state, or `state` (a _snapshot) with the live sampler and lr."""
        path = path or ckpt.checkpoint_path(self.exp, epoch)
        state = state or {"model": self.net.state_dict(), "loss": self.loss.state_dict(),
                          "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}
        ckpt.save(path, epoch=epoch, **state,
                  scheduler={"name": self.cfg["scheduler"]["name"], "lr": self.optimizer.param_groups[-1]["lr"]},
                  sampler=self.batches.state_dict(), rng=rng[0], rng_ranks=rng, config=self.cfg,
                  speakers=self.speakers)
        return path

    def _write_average(self):
        from avtk.embed import save_model

        epochs = ckpt.epochs_saved(self.exp)[-self.cfg["runtime"]["average_last"]:]
        avg = ckpt.average([ckpt.checkpoint_path(self.exp, e) for e in epochs])
        if self.cfg["data"]["input"] == "av":
            avg = self._write_joint_networks(avg, epochs)
        save_model(os.path.join(self.exp, "avg_model.pt"), avg, self.cfg, self.speakers, epochs)
        log.info("wrote %s/avg_model.pt (average of epochs %s)", self.exp, ", ".join(map(str, epochs)))

    def _write_joint_networks(self, avg, epochs):
        """data.input av: EXP/speaker_model.pt and EXP/face_model.pt, the fine-tuned (averaged) speaker and face
        networks as model files of their own (extract-embeddings embeds with them what avtk
        extract-joint-embeddings takes), and `avg` with the centring means of their embeddings."""
        from avtk.embed import save_model

        net = copy.deepcopy(self.net)  # the live network stays as trained (its checksum is logged per rank)
        net.load_state_dict(avg)
        net.set_means(*self._joint_means(net))
        for key, data_input in (("speaker", _speech_input(self.cfg)), ("face", "frames")):
            cfg = copy.deepcopy(self.cfg)
            cfg["model"] = {**copy.deepcopy(DEFAULTS["model"]), **cfg["model"][f"{key}_net"]}
            cfg["data"]["input"] = data_input
            path = os.path.join(self.exp, f"{key}_model.pt")
            save_model(path, getattr(net, key).state_dict(), cfg, self.speakers, epochs)
            log.info("wrote %s (the %s network of avg_model.pt)", path, key)
        return net.state_dict()

    # ----------------------------------------------------------------------------------- loop

    def _features(self, crops, index, epoch, augment=True):
        """Normalised (batch, frames, dim) features of a batch of crops, SpecAugment applied per crop (unless
        augment=False); normalised (batch, 3, H, W) images of a batch of face frames; or (data.input av) the
        tuple (speech features, normalised images (batch, K, 3, H, W), face flags (batch,)) of JointNet.rows."""
        kind = self.cfg["data"]["input"]
        if kind == "av":
            speech, frames, flag = crops
            frames = frames.to(self.device, non_blocking=True)
            with torch.no_grad():
                images = self.net.face.normalize(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])
            return (self._speech_features(self.net.speaker, speech, index, epoch, augment), images,
                    flag.to(self.device, non_blocking=True))
        if kind == "embeddings":
            return crops.to(self.device, non_blocking=True)
        if kind == "frames":
            with torch.no_grad():
                return self.net.normalize(crops.to(self.device, non_blocking=True))
        return self._speech_features(self.net, crops, index, epoch, augment)

    def _speech_features(self, net, crops, index, epoch, augment):
        """_features of speech crops for the speech network `net` (the trained one, or a JointNet's speaker)."""
        crops = crops.to(self.device, non_blocking=True)
        with torch.no_grad():
            if _speech_input(self.cfg) == "wav":
                feats, _ = net.features(crops)
            else:
                feats = crops
            feats = net.normalize(feats)
            if self.cfg["augment"]["spec_augment"] and augment:
                from avtk.augment import spec_augment_batch

                seed = self.cfg["runtime"]["seed"]
                feats = spec_augment_batch(feats, [np.random.default_rng([seed, epoch, i, 1]) for i in index.tolist()])
        return feats

    def _epoch(self, epoch):
        cfg, rt = self.cfg, self.cfg["runtime"]
        self.batches.set_epoch(epoch)
        self.module.train()
        if finetune.encoder_frozen(cfg, epoch):
            for module in finetune.encoder_modules(self.net):
                module.eval()  # frozen: its batch-norm statistics too
        steps = len(self.batches)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        bar = None
        if self.dist.main and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False)
        t0, seen, interval = time.time(), 0, rt["log_interval"]
        # Per step nothing goes to the host: loss, accuracy and the count of non-finite losses add up on the
        # device (sums), and once per log interval one all-reduce (under DDP) and one copy to the host check them
        # together with this rank's unreadable-batch flag.
        sums = torch.zeros(4, device=self.device)  # loss, accuracy, non-finite losses, unreadable batches
        failed, first, snapshot = None, 1, self._snapshot()
        prefix = f"[rank {self.dist.rank}] " if self.dist.world > 1 else ""
        for step, batch in enumerate(self.loader, 1):
            if not self.dist.initialized or self._last_batch is None:  # alone, or the run's first step: at once
                if self.dist.any(isinstance(batch, Failed)):
                    raise AvtkError(batch.message if isinstance(batch, Failed)
                                    else "another rank could not read its data")
            elif isinstance(batch, Failed):
                # The other ranks learn of it at the end of the interval; until then this rank keeps DDP's
                # collectives in step by training again on its previous batch (the run stops there anyway).
                failed = failed or batch.message
                sums[3] += 1.0
                batch = self._last_batch
            self._last_batch = batch
            crops, labels, index = batch
            progress = epoch - 1 + (step - 1) / steps
            lr = learning_rate(cfg["scheduler"], cfg["optim"]["lr"], progress, rt["epochs"])
            for group in self.optimizer.param_groups:
                group["lr"] = lr * finetune.group_lr_scale(cfg, group, epoch)
            self.margins.step(self.loss, progress)
            feats = self._features(crops, index, epoch)
            labels = labels.to(self.device)
            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, acc = self.ddp(feats, labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            seen += len(labels)
            loss = loss.detach().float()
            sums[:3] += torch.stack([loss, acc.detach().float(), (~torch.isfinite(loss)).float()])
            if bar is not None:
                bar.update(1)
            if step % interval == 0 or step == steps:
                # the interval's one all-reduce (flags) and one host sync
                loss_sum, acc_sum, nonfinite, unreadable = torch.cat([sums[:2], self.dist.sum(sums[2:])]).tolist()
                if unreadable:
                    raise AvtkError(failed or f"another rank could not read its data (epoch {epoch}, steps "
                                    f"{first}-{step})")
                if nonfinite:
                    rng = self.dist.gather(ckpt.rng_state(self.device))
                    path = os.path.join(self.exp, "checkpoints", "last_good.pt")
                    if self.dist.main:
                        self._save(epoch - 1, rng, path, snapshot)
                    raise AvtkError(f"loss is not finite at epoch {epoch} in steps {first}-{step} ({int(nonfinite)} "
                                    f"step{'s' if nonfinite > 1 else ''} of {self.dist.world} rank"
                                    f"{'s' if self.dist.world > 1 else ''}; lr {lr:.3g}); training stopped. The last "
                                    f"good state (the weights before step {first}: finiteness is checked once per "
                                    f"runtime.log_interval) is saved in {path}; lower optim.lr, or check the features")
                n = step - first + 1
                log.info("%sepoch %d step %d/%d lr %.3g loss %.4f acc %.2f%% margin %.3f samples/s %.1f",
                         prefix, epoch, step, steps, lr, loss_sum / n, acc_sum / n, self.loss.margin,
                         seen * self.dist.world / (time.time() - t0))
                sums.zero_()
                first = step + 1
                if step < steps:
                    snapshot = self._snapshot()
        if bar is not None:
            bar.close()
        return seen * self.dist.world / max(time.time() - t0, 1e-9)

    def _validate(self, epoch):
        from avtk.embed import validation_eer

        rt = self.cfg["runtime"]
        eer = validation_eer(self.net, self.val_data, self.val_trials, self.cfg["data"]["input"], self.device,
                             rt["val_max_frames"], rt["val_face_frames"], self.cfg["data"]["num_workers"])
        log.info("epoch %d validation EER %.3f%% (%s)", epoch, eer, self.val_trials)
        lines = ckpt.read_validation(self.exp)
        lines[epoch] = f"{epoch} {eer:.4f}"
        ckpt.write_validation(self.exp, lines)
        return eer

    def _validates(self, epoch):
        return bool(self.val_trials) and (epoch % self.cfg["runtime"]["val_interval"] == 0
                                          or epoch == self.cfg["runtime"]["epochs"])

    def _catch_up_validation(self, epoch):
        """On resume from `epoch`: drop validation.txt lines of later epochs (a fallback to an earlier checkpoint
        redoes them), and redo this epoch's validation when a kill lost it."""
        lines = ckpt.read_validation(self.exp)
        later = [e for e in lines if e > epoch]
        if later:
            ckpt.write_validation(self.exp, {e: v for e, v in lines.items() if e <= epoch})
        if self._validates(epoch) and epoch not in lines:
            log.info("validation.txt has no line for epoch %d (interrupted?): validating it now", epoch)
            self._validate(epoch)

    def run(self):
        rt = self.cfg["runtime"]
        path, state = self._resume_state() if self.resume else (None, None)
        if self.resume and state is None:
            log.info("--resume: no checkpoint in %s/checkpoints; starting from epoch 1", self.exp)
        if state is not None:
            self._restore(path, state)
        if self.dist.main:
            make_dirs(self.exp)  # a file in the way is an AvtkError naming it
            make_dirs(os.path.join(self.exp, "checkpoints"))  # before the first epoch, not after it
            if state is None:
                gone = ckpt.clear_previous_run(self.exp)  # first: a file it cannot remove leaves config.yaml as it was
                save_config(self.cfg, os.path.join(self.exp, "config.yaml"))
                if gone:
                    log.warning("%s held %d files of a previous run (checkpoints, avg_model.pt, ...); "
                                "removed them: this run starts afresh (--resume continues a run)", self.exp, gone)
            else:
                self._record_resume(path)
                self._catch_up_validation(state["epoch"])
            self._write_skipped()
        self.dist.barrier()
        if state is not None:
            self._set_rng(state)  # after the catch-up validation, which must not move the generators
        log.info("training %s on %d utterances of %d speakers, epochs %d-%d, %d steps/epoch, %s, amp %s",
                 self.cfg["model"]["encoder"], len(self.dataset), len(self.speakers), self.start_epoch,
                 rt["epochs"], len(self.batches), self.device, self.amp)
        try:
            for epoch in range(self.start_epoch, rt["epochs"] + 1):
                rate = self._epoch(epoch)
                rng = self.dist.gather(ckpt.rng_state(self.device))
                if self.dist.main:
                    self._save(epoch, rng)
                    ckpt.prune(self.exp, rt["keep_last"])
                    log.info("epoch %d done, %.1f samples/s; saved %s", epoch, rate, ckpt.checkpoint_path(self.exp, epoch))
                    if self._validates(epoch):
                        self._validate(epoch)
                self.dist.barrier()
            if self.dist.main:
                self._write_average()
            # One line per rank: equal checksums show that DDP kept the replicas' weights identical.
            prefix = f"[rank {self.dist.rank}] " if self.dist.world > 1 else ""
            log.info("%sfinal weights checksum %s", prefix, _checksum(self.module))
        finally:
            teardown()
