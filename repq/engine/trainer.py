"""One training job: FP, FP-BNest or QAT, resumable, on one or several processes.

Outputs in ``out`` (written atomically, by rank 0): ``model.pt`` (the selected
checkpoint: best validation top-1 for classification, last epoch for super-resolution,
S1; validated every ``train.val_every`` epochs and at the last), ``deploy.pt`` (its
deploy form), ``metrics.json``, ``history.csv`` and ``precision.tsv``. The resumable
checkpoint lives in ``resume_dir`` (not a declared output); a job started again with
the same config continues from it.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import itertools
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from repq.config import config_hash, flatten
from repq.data.sampling import EpochSampler
from repq.engine import distributed
from repq.engine.build import build_model, deploy_form
from repq.engine.checkpoint import load_checkpoint, save_checkpoint
from repq.engine.optim import (
    make_optimizer,
    make_scheduler,
    parameter_groups,
    run_lr,
    stage_numerics,
    stage_train,
)
from repq.engine.tasks import Task, make_task
from repq.errors import ConfigError, TrackingUndelivered, TrainingDiverged
from repq.files import atomic_write, sole_writer
from repq.qat import calibrate, precision_tsv
from repq.qat.health import clipped_fractions, float_health_rows, health_csv, health_rows
from repq.quant.init import QuantInit
from repq.quant.layers import QuantLayer, set_recompute
from repq.tracking import RunSpec, Tracker, now_ms, run_name, stage_run
from repq.vocab import Stage

log = logging.getLogger("repq")


@dataclass
class Job:
    """What one ``repq train`` invocation does."""

    config: dict
    stage: Stage
    out: Path
    init: Path | None = None
    resume_dir: Path | None = None
    threads: int = 1

    @property
    def name(self) -> str:
        return run_name(self.config, str(self.stage))

    @property
    def resume_path(self) -> Path:
        return (self.resume_dir or self.out / "resume") / "last.pt"

    def run_spec(self) -> RunSpec:
        return stage_run(self.config, self.stage, "train", str(self.stage))


def step_summary(model: nn.Module) -> dict[str, float]:
    """Mean LSQ step per layer group (the model's top-level children)."""
    sums: dict[str, list[float]] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLayer):
            group = name.split(".")[0]
            for kind in ("weight", "input"):
                step = getattr(module, f"{kind}_quant").step.detach().float().mean().item()
                sums.setdefault(f"qstep/{group}/{kind}", []).append(step)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _history_csv(history: list[dict]) -> str:
    keys = list(dict.fromkeys(k for row in history for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


class Trainer:
    """Runs a :class:`Job` from start (or its last checkpoint) to its outputs."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.train_cfg = stage_train(job.config["train"], job.stage)
        self.ctx = distributed.setup()
        torch.set_num_threads(max(1, job.threads))
        torch.manual_seed(self.train_cfg.get("seed", 0))
        self.task: Task = make_task(job.config)
        self.cuda = self.ctx.device.type == "cuda"
        numerics = stage_numerics(job.config["train"], job.stage)
        self.amp = self.cuda and numerics.amp
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = numerics.tf32
            torch.backends.cudnn.allow_tf32 = numerics.tf32
        self.channels_last = self.cuda and self.train_cfg.get("channels_last", True)
        self.model = build_model(job.config, job.stage, job.init)
        if "recompute_quantized" in self.train_cfg:
            set_recompute(self.model, self.train_cfg["recompute_quantized"])
        self.model.to(self.ctx.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.loader, self.sampler = self._loader()
        lr = run_lr(self.train_cfg, job.stage)
        self.optimizer = make_optimizer(
            parameter_groups(self.model, self.train_cfg, lr, job.stage.bits), self.train_cfg
        )
        self.epochs = self.train_cfg["epochs"]
        self.val_every = self.train_cfg.get("val_every", 1)
        self.clip_grad_norm = self.train_cfg.get("clip_grad_norm")
        self.tracker = Tracker(  # checks the store; writes nothing before the run starts
            job.config.get("tracking", {}), job.out / "tracking.jsonl", enabled=self.ctx.is_main
        )
        self.scheduler = make_scheduler(
            self.optimizer, self.train_cfg, self.epochs, len(self.loader)
        )
        self.epoch, self.history = 0, []
        self.best: float | None = None
        self.best_epoch, self.best_metrics, self.best_state = -1, {}, None
        self.run_key: str | None = None
        self.clipped_init: dict[str, float] = {}
        self.digest = config_hash({**job.config, "_stage": str(job.stage)})

    def _loader(self) -> tuple[DataLoader, EpochSampler]:
        dataset = self.task.train_set()
        world, batch = self.ctx.world, self.task.batch_size(self.ctx.device)
        if batch % world:
            raise ConfigError(f"train.batch_size {batch} is not divisible by {world} processes")
        sampler = EpochSampler(
            len(dataset),
            self.train_cfg.get("seed", 0),
            True,
            self.ctx.rank,
            world,
            self.task.epoch_samples(len(dataset), batch),
        )
        workers = self.job.config["data"].get("workers", 0)
        loader = DataLoader(
            dataset,
            batch_size=batch // world,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.cuda,
            persistent_workers=workers > 0,
            drop_last=True,
            collate_fn=getattr(dataset, "collate", None),
        )
        if len(loader) == 0:
            raise ConfigError(
                f"train.batch_size {batch} exceeds the {len(sampler) * world} training samples"
            )
        return loader, sampler

    # -- resume ----------------------------------------------------------------------

    def _try_resume(self) -> bool:
        path = self.job.resume_path
        if not path.exists():
            return False
        state = load_checkpoint(path, "resume")
        if state["config_hash"] != self.digest:
            log.warning("%s belongs to another config; starting from scratch", path)
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.history = state["epoch"], state["history"]
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.best_metrics, self.best_state = state["best_metrics"], state["best_state"]
        self.run_key = state.get("run_key")
        self.clipped_init = state["clipped_init"]
        torch.set_rng_state(state["rng"])
        log.info("resumed %s at epoch %d from %s", self.job.name, self.epoch, path)
        return True

    def _save_resume(self) -> None:
        save_checkpoint(
            self.job.resume_path,
            "resume",
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            epoch=self.epoch,
            history=self.history,
            best=self.best,
            best_epoch=self.best_epoch,
            best_metrics=self.best_metrics,
            best_state=self.best_state,
            run_key=self.run_key,
            config_hash=self.digest,
            clipped_init=self.clipped_init,
            rng=torch.get_rng_state(),
        )

    # -- training --------------------------------------------------------------------

    def batches(self, count: int) -> Iterator[torch.Tensor]:
        """The first ``count`` input batches of epoch 0, on the device."""
        self.sampler.set_epoch(0)
        for inputs, _ in itertools.islice(self.loader, count):
            yield self._to_device(inputs)

    def calibrate(self) -> None:
        """Initialise every LSQ step from the recipe's calibration batches (eval mode: no
        statistics change) before DDP broadcasts rank 0's parameters, and record how
        much of each layer's weight the initial steps clip."""
        if not self.job.stage.quantized:
            return
        batches = QuantInit.from_config(self.job.config).calibration_batches
        calibrate(self.model, self.batches(batches))
        self.clipped_init = clipped_fractions(self.model)

    def _to_device(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.to(self.ctx.device, non_blocking=True)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def _check_finite(self, loss_sum: torch.Tensor, step: int) -> None:
        if not torch.isfinite(loss_sum):
            raise TrainingDiverged(
                f"{self.job.name}: the training loss became {loss_sum.item()} in epoch "
                f"{self.epoch} (by step {step}); stopped. The last good checkpoint is "
                f"{self.job.resume_path if self.job.resume_path.exists() else 'none'}; "
                "lower the LR or check the data."
            )

    def _progress(self, iterable):
        if self.ctx.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            return tqdm(iterable, desc=f"{self.job.name} epoch {self.epoch}", leave=False)
        return iterable

    def _train_epoch(self, model: nn.Module) -> dict[str, float]:
        model.train()
        self.sampler.set_epoch(self.epoch)
        device, log_every = self.ctx.device, self.train_cfg.get("log_every", 50)
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        count = torch.zeros((), device=device, dtype=torch.float64)
        start = time.perf_counter()
        for step, (inputs, target) in enumerate(self._progress(self.loader)):
            inputs, target = self._to_device(inputs), target.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
                output = model(inputs)
            loss = self.task.loss(output.float(), target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), self.clip_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * target.shape[0]
            count += target.shape[0]
            if (step + 1) % log_every == 0:
                self._check_finite(loss_sum, step)
        self._check_finite(loss_sum, len(self.loader))
        totals = distributed.all_reduce_sum(self.ctx, torch.stack([loss_sum, count]))
        elapsed = time.perf_counter() - start
        return {
            "train_loss": (totals[0] / totals[1]).item(),
            "images_per_sec": totals[1].item() / elapsed,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def evaluate(self) -> dict[str, float]:
        deployed = deploy_form(self.model, self.job.stage)
        return self.task.evaluate(deployed, self.ctx.device)

    def _validates(self) -> bool:
        """Whether this epoch is validated: every ``train.val_every``-th and the last (the
        selected checkpoint is the best validated epoch)."""
        return self.epoch == self.epochs - 1 or (self.epoch + 1) % self.val_every == 0

    def _record(self, train_stats: dict[str, float], metrics: dict[str, float]) -> None:
        row = {"epoch": self.epoch, **train_stats, **metrics, **step_summary(self.model)}
        self.history.append(row)
        if metrics and self.task.is_better(metrics, self.best):
            self.best = metrics[self.task.primary]
            self.best_epoch, self.best_metrics = self.epoch, metrics
            self.best_state = copy.deepcopy(self.model.state_dict())
        self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, self.epoch)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if not k.startswith("qstep"))
        print(f"[{self.job.name}] {shown}", flush=True)

    def _start_tracking(self) -> None:
        params = {
            **flatten(self.job.config),
            "stage": str(self.job.stage),
            "init": str(self.job.init) if self.job.init else None,
            "world_size": self.ctx.world,
        }
        if self.run_key is None or not self.tracker.resume(self.run_key):
            self.run_key = self.tracker.start(self.job.run_spec(), params, self.started)
            for data in self.task.data_refs:
                self.tracker.log_input(data)

    def run(self) -> dict:
        """Train to the last epoch and write the outputs; returns the final metrics.
        Everything was checked when the trainer was made: the output and resume folders
        are touched only now, by this job alone (:func:`repq.files.sole_writer`)."""
        with contextlib.ExitStack() as held:
            if self.ctx.is_main:
                held.enter_context(sole_writer(self.job.out))
                held.enter_context(sole_writer(self.job.resume_path.parent))
            return self._run()

    def _run(self) -> dict:
        self.startup_cpu, self.started = time.process_time(), now_ms()
        try:
            resumed = self._try_resume()
            if not resumed:
                self.calibrate()
            model = self.model
            if self.ctx.distributed:
                ids = [self.ctx.local_rank] if self.cuda else None
                model = DistributedDataParallel(self.model, device_ids=ids)
            if self.train_cfg.get("compile", False):
                model = torch.compile(model)
            self._start_tracking()
            while self.epoch < self.epochs:
                stats = self._train_epoch(model)
                if self.ctx.is_main:
                    self._record(stats, self.evaluate() if self._validates() else {})
                self.epoch += 1
                if self.ctx.is_main:
                    self._save_resume()
                distributed.barrier(self.ctx)
            if not self.history and self.ctx.is_main:  # PTQ: the calibrated model as it is
                self._record({}, self.evaluate())
            result = self._finish() if self.ctx.is_main else {}
            distributed.barrier(self.ctx)
        except BaseException:
            self.tracker.finish("FAILED")
            with contextlib.suppress(TrackingUndelivered):
                self.tracker.close(timeout=10)
            raise
        finally:
            distributed.teardown(self.ctx)
        self.tracker.close()  # the outputs are written; undelivered tracking: exit 3
        return result

    # -- outputs ---------------------------------------------------------------------

    def _health_rows(self) -> list[dict]:
        """Per-layer quantization health on the first batch (float model: its deploy
        weights' outlier ratios)."""
        if not self.job.stage.quantized:
            return float_health_rows(self.model)
        batch = next(self.batches(1))
        return health_rows(self.model, self.clipped_init, batch)

    def _finish(self) -> dict:
        out, job = self.job.out, self.job
        self.model.load_state_dict(self.best_state)
        common = {"config": job.config, "stage": str(job.stage)}
        save_checkpoint(out / "model.pt", "model", model=self.model.state_dict(), **common)
        deployed = deploy_form(self.model, job.stage)
        save_checkpoint(out / "deploy.pt", "deploy", model=deployed.state_dict(), **common)
        self.tracker.flush(timeout=5)  # the store's run id, delivered long ago unless down
        result = {
            "name": job.name,
            "task": job.config["task"],
            "stage": str(job.stage),
            "model": job.config["model"]["name"],
            "selection": self.task.select,
            "epoch": self.best_epoch,
            "metrics": self.best_metrics,
            "images_per_sec": self.history[-1].get("images_per_sec"),
            "run_id": self.tracker.run_id,
            "cpu_seconds": {"startup": self.startup_cpu, "total": time.process_time()},
            **distributed.peak_memory(self.ctx),
        }
        _write_text(out / "history.csv", _history_csv(self.history))
        from repq.report.figures import curve_figure  # matplotlib: only when a job ends

        atomic_write(
            out / "curve.png",
            lambda tmp: curve_figure(out / "history.csv", tmp, job.name, self.task.primary),
        )
        _write_text(out / "precision.tsv", precision_tsv(self.model))
        _write_text(out / "health.csv", health_csv(self._health_rows()))
        _write_text(out / "config.json", json.dumps(job.config, indent=2))
        _write_text(out / "metrics.json", json.dumps(result, indent=2))
        self.tracker.log_metrics(
            {f"final/{k}": v for k, v in self.best_metrics.items()}, self.epoch
        )
        names = ("metrics.json", "config.json", "precision.tsv", "health.csv", "history.csv")
        for name in (*names, "deploy.pt"):
            self.tracker.log_artifact(out / name)
        self.tracker.finish()
        return result


def train(job: Job) -> dict:
    """Run a training job; see :class:`Trainer`."""
    return Trainer(job).run()
