"""One accelerate training loop for every backbone, objective and protocol.

The loop sees batches of ``input_ids`` and aligned ``labels`` (see objectives.py) and
minimises the mean cross-entropy per labelled token. Under gradient accumulation and
several processes the mean is taken over every labelled token of the whole optimizer
step (``num_items_in_batch``), not averaged per micro-batch, so that a micro-batch with
few answer tokens does not weigh as much as one with many.

Checkpoints (``accelerator.save_state``: model, optimizer, RNG states; the trainer's counters and the
scheduler's state as JSON beside them) are written to a temporary folder and renamed when complete, so a
run killed mid-write resumes from the last complete one. A checkpoint may come from someone else: nothing
in it is unpickled beyond tensors (accelerate reads weights only; the scheduler, which it would unpickle,
is never registered with it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from accelerate.utils import load as accelerate_load
from accelerate.utils.constants import RNG_STATE_NAME
from datasets import Dataset
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, get_cosine_with_min_lr_schedule_with_warmup

from bidirect.config import ConfigError, TrainConfig
from bidirect.integrity import write_manifest
from bidirect.objectives import IGNORE
from bidirect.rundir import CHECKPOINTS_DIR, DONE_FILE, LOG_FILE, MODEL_DIR, STATE_FILE, read_json, write_json_atomic

LOADER_WORKERS = 4  # per process, on CUDA (see make_loader)


class TrainingError(RuntimeError):
    """Training cannot go on; the message says where it stopped and what to do."""


@dataclass
class PhaseSummary:
    name: str
    steps: int
    tokens: int  # labelled tokens seen, summed over processes
    seconds: float
    final_loss: float
    tokens_per_second: float
    positions: int = 0  # token positions the model computed, padding included, summed over processes (0: not
    # counted, a phase of an older version); with models.flops_per_token, the phase's training FLOPs


def micro_batch_size(cfg: TrainConfig, examples: int, processes: int, name: str, where: str = "batch_size") -> int:
    """The micro-batch per process for ``cfg``; a `ConfigError` naming ``where`` (the field as the user
    wrote it) when the stream of ``examples`` cannot fill one step. Run before anything is trained."""
    if cfg.batch_size % (cfg.grad_accum * processes):
        raise ConfigError(f"{where}: {cfg.batch_size} is not divisible by grad_accum {cfg.grad_accum} x "
                          f"{processes} processes ({name})")
    micro = cfg.batch_size // (cfg.grad_accum * processes)
    if examples < micro * processes:
        raise ConfigError(f"{where}: {cfg.batch_size} is more than the {examples} training examples of {name}; "
                          f"lower it to at most {examples * cfg.grad_accum}")
    return micro


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross-entropy over labelled positions (labels already aligned with logits), each weighted by
    ``weights`` (same shape as ``labels``) when given.

    ``logits`` is (batch, length, vocabulary), or (labelled positions, vocabulary) when the head
    ran on those only (`LabelledHead`), in the row-major order of ``labels != IGNORE``."""
    if logits.dim() == 2:
        keep = labels != IGNORE
        labels, weights = labels[keep], (weights[keep] if weights is not None else None)
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.flatten(), ignore_index=IGNORE,
                             reduction="none" if weights is not None else "sum")
    return losses if weights is None else (losses * weights.flatten().float()).sum()


class LabelledHead:
    """Runs a model's LM head only at the positions that have a label.

    A masked LM has a label at about 15% of its positions, and the head (vocabulary x width per
    position) is a large share of a small model's step: at the quick study's size a masked step
    takes about a quarter less time. The loss and its gradient are the same, since the other
    logits are never read. A forward pre-hook on the output embedding selects the positions of
    ``mask``, set before a forward pass and used up by it (a pass with no mask set reads every
    position, as the evaluator does), so the model stays a stock transformers model, called as
    usual and through DDP. Where the hidden states do not have the mask's shape the hook leaves
    them alone and the logits come back whole, which `token_loss_sum` also takes.
    """

    def __init__(self, model: torch.nn.Module):
        self.mask: torch.Tensor | None = None
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self._handle = head.register_forward_pre_hook(self._select) if head is not None else None

    def _select(self, module: torch.nn.Module, args: tuple) -> tuple | None:
        mask, self.mask = self.mask, None
        hidden = args[0]
        if mask is None or hidden.shape[:-1] != mask.shape:
            return None
        return (hidden[mask], *args[1:])

    def __enter__(self) -> LabelledHead:
        return self

    def __exit__(self, *exc: object) -> None:  # the model leaves training as it came: no hook
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.mask = None


def complete_checkpoints(directory: Path, quiet: bool = False) -> list[Path]:
    """Complete checkpoints, oldest first; half-written ones are reported and skipped."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith("step_") and (path / STATE_FILE).is_file():
            found.append(path)
        elif not quiet:
            print(f"[bidirect] skipping incomplete checkpoint {path} (killed while it was written)")
    return found


def _truncate_log(log_path: Path, step: int) -> None:
    """Forget the log lines of steps after ``step``: a killed run logged them, the resumed
    run will log them again."""
    if not log_path.is_file():
        return
    # bytes that are no UTF-8 (a damaged disk) make unreadable lines, which go like the line a kill cut
    lines = log_path.read_bytes().decode("utf-8", errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut by the kill
            continue
    if kept != lines:
        tmp = log_path.with_name(f".{log_path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, log_path)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    # Decay matrices only: norms and biases are 1-D and should not be pulled to zero.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=fused)


def progress_line(name: str, step: int, steps: int, loss: float, tokens_per_second: float, elapsed: float,
                  remaining: float) -> str:
    """One plain progress line, for output that is not a terminal."""
    def clock(t: float) -> str:
        return f"{int(t) // 3600}:{int(t) % 3600 // 60:02d}:{int(t) % 60:02d}"
    return (f"{name} step {step}/{steps} loss {loss:.4f} {tokens_per_second:,.0f} tok/s "
            f"elapsed {clock(elapsed)} left {clock(remaining)}")


def loader_workers(device: torch.device) -> int:
    """Processes that collate (and mask) the next batches while the device computes: LOADER_WORKERS on CUDA; none
    on a CPU, where they would take the cores the step runs on."""
    return LOADER_WORKERS if device.type == "cuda" else 0


def make_loader(stream: Dataset, micro: int, collate: Callable, device: torch.device) -> DataLoader:
    """The shuffled stream in micro-batches, collated by `loader_workers` processes into pinned memory on CUDA.
    Workers start afresh at each pass over the stream, so they see the objective's current epoch
    (``set_epoch``); an example's masks do not depend on which process drew them."""
    workers = loader_workers(device)
    return DataLoader(stream, batch_size=micro, shuffle=True, collate_fn=collate, drop_last=True,
                      num_workers=workers, pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)


def train_step(model: torch.nn.Module, micro_batches: list[dict[str, torch.Tensor]], accelerator: Accelerator,
               optimizer: torch.optim.Optimizer, cfg: TrainConfig,
               head: LabelledHead | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step over ``cfg.grad_accum`` micro-batches on the device: the loss summed over labelled
    tokens, what it is divided by (their number, or their summed ``weights`` when the batch has them), and their
    number, all summed over processes and left on the device (reading them makes the host wait for the device:
    the caller does it at logging steps only)."""
    world = accelerator.num_processes
    # Count labelled tokens over the whole optimizer step and every process first, so that each micro-batch's
    # summed loss is divided by the same number.
    count = accelerator.reduce(sum((b["labels"] != IGNORE).sum() for b in micro_batches), "sum")
    weighted = "weights" in micro_batches[0]
    num_items = accelerator.reduce(sum(b["weights"].sum() for b in micro_batches), "sum") if weighted else count
    loss_total = torch.zeros((), dtype=torch.float64, device=accelerator.device)  # as a sum of Python floats
    for batch in micro_batches:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "index", "weights")}
        with accelerator.accumulate(model):
            if head is not None:
                head.mask = labels != IGNORE
            loss_sum = token_loss_sum(model(**inputs).logits, labels, batch.get("weights"))
            # accelerate divides by grad_accum and DDP averages over processes; undo both so that the gradient
            # is that of (summed loss / num_items).
            accelerator.backward(loss_sum * cfg.grad_accum * world / num_items.clamp(min=1))
            loss_total += loss_sum.detach()
            if accelerator.sync_gradients and cfg.clip_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(loss_total, "sum"), num_items, count


class PendingLosses:
    """The losses of the steps since the last logging step, still on the device, with each step's example
    indices: read at logging steps and before a checkpoint, so a non-finite loss is found without making the
    host wait at every step, and never saved into a checkpoint."""

    def __init__(self) -> None:
        # per step: its number, summed loss, what the loss is divided by, labelled tokens, example indices
        self.steps: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]] = []
        self.positions = 0  # this process's, since the last read

    def add(self, step: int, loss: torch.Tensor, num_items: torch.Tensor, count: torch.Tensor,
            indices: list[torch.Tensor], positions: int) -> None:
        self.steps.append((step, loss, num_items, count, indices))
        self.positions += positions

    def read(self, name: str, last_checkpoint: Path | None, accelerator: Accelerator) -> tuple[float, int, int]:
        """The last step's mean loss, and the labelled tokens and token positions of every unread step summed over
        processes; a `TrainingError` naming the first step whose loss is not finite."""
        if not self.steps:
            return float("nan"), 0, 0
        positions = int(accelerator.reduce(torch.tensor(self.positions, device=accelerator.device), "sum"))
        self.positions = 0
        # One transfer: per step its summed loss, what it is divided by, and its labelled tokens (float64 holds the
        # counts exactly, and the loss as the trainer sums it).
        read = torch.stack([torch.stack([loss, n.double(), count.double()])
                            for _, loss, n, count, _ in self.steps]).tolist()
        losses, counts = [r[0] for r in read], [int(r[2]) for r in read]
        last = read[-1][1]
        for (step, _, _, _, indices), loss in zip(self.steps, losses):
            if not math.isfinite(loss):
                examples = torch.cat(indices).tolist()[:16]
                raise TrainingError(f"{name}: non-finite loss at step {step}; examples {examples} of this stream; "
                                    f"last good checkpoint: {last_checkpoint or 'none (the phase start)'}")
        self.steps.clear()
        return losses[-1] / max(last, 1), int(sum(counts)), positions


def train_phase(
    model: PreTrainedModel,
    collate,
    stream: Dataset,
    cfg: TrainConfig,
    out_dir: Path,
    accelerator: Accelerator,
    name: str,
    seed: int,
    finalize: Callable[[torch.nn.Module], PreTrainedModel] | None = None,
) -> PhaseSummary:
    """Train ``model`` on ``stream`` for ``cfg.steps`` optimizer steps, resuming from the
    last complete checkpoint in ``out_dir/checkpoints`` if there is one.

    Returns the summary; the trained model is saved with ``save_pretrained`` to
    ``out_dir/model`` and the phase is marked done by ``out_dir/phase.json``. ``finalize``, when
    given, turns the trained model into the one to save (LoRA: merge the adapters into the weights).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp and finalize is not None:
        raise TrainingError(f"{name}: LoRA fine-tuning under FSDP is not supported (merging needs the whole model); "
                            "fine-tune without FSDP, e.g. one process or DDP")
    micro = micro_batch_size(cfg, len(stream), accelerator.num_processes, name)  # study.preflight checked it too

    accelerator.gradient_accumulation_steps = cfg.grad_accum
    # The seedable sampler takes its seed from the global RNG when the loader is prepared:
    # seed it here, so the data order is the same in a fresh and in a resumed process.
    set_seed(seed)
    loader = make_loader(stream.add_column("index", list(range(len(stream)))), micro, collate, accelerator.device)
    optimizer = make_optimizer(model, cfg, fused=accelerator.device.type == "cuda")
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps, min_lr=cfg.min_lr
    )
    head = LabelledHead(model) if use_labelled_head(cfg, accelerator) else None
    if cfg.compile:
        model = torch.compile(model)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    # step, tokens, positions, seconds; the scheduler restored from the checkpoint's JSON
    state, last_checkpoint = _resume(accelerator, out_dir, name, cfg.steps, optimizer, scheduler)
    step = state["step"]
    source = _micro_batches(loader, collate, accelerator, consumed=step * cfg.grad_accum)
    model.train()
    unread, loss_value, rate = PendingLosses(), float("nan"), 0.0
    with _Progress(name, cfg.steps, step, state["seconds"], out_dir / LOG_FILE, accelerator) as progress, \
            head if head is not None else contextlib.nullcontext():
        while step < cfg.steps:
            started = time.perf_counter()
            micro_batches = [next(source) for _ in range(cfg.grad_accum)]
            loss_sum, num_items, count = train_step(model, micro_batches, accelerator, optimizer, cfg, head)
            scheduler.step()
            step += 1
            unread.add(step, loss_sum, num_items, count, [b["index"] for b in micro_batches],
                       sum(b["input_ids"].numel() for b in micro_batches))
            state["step"], state["seconds"] = step, state["seconds"] + time.perf_counter() - started
            checkpoint = cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps
            logging = step % cfg.log_every == 0 or step == cfg.steps
            if logging or checkpoint:  # the only places the host waits for the device
                loss_value, counted, positions = unread.read(name, last_checkpoint, accelerator)
                state["tokens"] += counted
                state["positions"] += positions
                rate = state["tokens"] / max(state["seconds"], 1e-9)
            progress.update(step, loss_value, rate, state["seconds"])
            if logging:
                progress.log(step, loss_value, scheduler.get_last_lr()[0])
            if checkpoint:
                state["scheduler"] = scheduler.state_dict()
                last_checkpoint = save_checkpoint(accelerator, out_dir / CHECKPOINTS_DIR, state)

    summary = PhaseSummary(name, step, state["tokens"], state["seconds"], loss_value,
                           state["tokens"] / max(state["seconds"], 1e-9), state["positions"])
    _save_model(model, accelerator, out_dir, summary, fsdp, finalize)
    accelerator.free_memory()  # forget this phase's model/optimizer so the next save_state holds only its own
    return summary


class _Progress:
    """What a phase shows and records as it trains: a live bar on a terminal, or a plain line per logging step
    in a log file or a cluster job (where a bar would print nothing until the phase ends); the loss and learning
    rate of each logging step in ``log.jsonl`` and in the experiment trackers of tracking.log_with."""

    def __init__(self, name: str, steps: int, step: int, seconds: float, log_path: Path, accelerator: Accelerator):
        self.name, self.steps, self.log_path, self.accelerator = name, steps, log_path, accelerator
        self.first_step, self.first_seconds = step, seconds  # a resumed phase's rate is this process's
        self.seconds, self.rate = seconds, 0.0
        self.live = Console().is_terminal
        self.bar = Progress(
            TextColumn(f"[bold]{name}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
            TimeElapsedColumn(), TimeRemainingColumn(), disable=not (accelerator.is_main_process and self.live),
        )
        self.task = self.bar.add_task(name, total=steps, completed=step, loss=float("nan"), tps=0.0)
        if accelerator.is_main_process:
            _truncate_log(log_path, step)

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def update(self, step: int, loss: float, rate: float, seconds: float) -> None:
        self.seconds, self.rate = seconds, rate
        self.bar.update(self.task, completed=step, loss=loss, tps=rate)

    def log(self, step: int, loss: float, lr: float) -> None:
        self.accelerator.log({f"{self.name}/loss": loss, f"{self.name}/lr": lr,
                              f"{self.name}/tokens_per_second": self.rate}, step=step)
        if not self.accelerator.is_main_process:
            return
        with self.log_path.open("a") as f:
            f.write(json.dumps({"step": step, "loss": loss, "lr": lr}) + "\n")
        if not self.live:
            left = (self.seconds - self.first_seconds) / (step - self.first_step) * (self.steps - step)
            print(progress_line(self.name, step, self.steps, loss, self.rate, self.seconds, left), flush=True)


def use_labelled_head(cfg: TrainConfig, accelerator: Accelerator) -> bool:
    """Whether `LabelledHead` runs. Not under torch.compile (a new shape every step) nor FSDP (hooks on sharded
    modules, untested), and not on CUDA: selecting a data-dependent number of rows makes the host wait for the
    device at every micro-batch, and at the sizes a GPU trains the head is a few percent of the step."""
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    return cfg.labelled_logits_only and not cfg.compile and not fsdp and accelerator.device.type != "cuda"


def _resume(accelerator: Accelerator, out_dir: Path, name: str, steps: int, optimizer: Any, scheduler: Any
            ) -> tuple[dict[str, Any], Path | None]:
    """Load the last complete checkpoint of the phase, if any: the trainer's counters there, and its path."""
    fresh = {"step": 0, "tokens": 0, "positions": 0, "seconds": 0.0}
    checkpoints = complete_checkpoints(out_dir / CHECKPOINTS_DIR)
    if not checkpoints:
        return fresh, None
    last = checkpoints[-1]
    advice = "Delete it to resume from the one before, or start the run over with --force."
    state = read_json(last / STATE_FILE, f"{name}: the state of checkpoint {last}", advice)
    if not isinstance(state, dict) or not all(isinstance(state.get(k), (int, float)) for k in
                                              ("step", "tokens", "seconds")):
        raise TrainingError(f"{last / STATE_FILE}: not a checkpoint state (step, tokens, seconds). {advice}")
    pickles = sorted(p.name for p in last.glob("custom_checkpoint_*.pkl"))
    if pickles:  # accelerate would refuse to load without them and unpickle them with weights_only=False
        raise TrainingError(
            f"{name}: checkpoint {last} holds {', '.join(pickles)}, a pickle bidirect does not read: earlier "
            f"versions saved the learning-rate schedule there, and unpickling a received one could run code. "
            f"Delete it to resume from this checkpoint (the schedule follows from the step), or start over with "
            f"--force.")
    try:
        # accelerate skips RNG states it cannot read with one log line: the resumed run would then draw other
        # masks and batches than an uninterrupted one. Read them first, weights only, so damage stops here.
        _check_rng_states(last / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl")
        accelerator.load_state(str(last))
        _load_scheduler(scheduler, state.get("scheduler"), optimizer, state["step"])
    except pickle.UnpicklingError:  # torch's weights-only loader met objects; its text advises loading unsafely
        raise TrainingError(f"{name}: checkpoint {last} is corrupt: a file in it holds Python objects beyond "
                            f"tensors, which bidirect does not unpickle (it could run code). {advice}") from None
    except Exception as err:  # a renamed checkpoint is complete; failing to read it means damage
        text = " ".join(str(err).split())[:200]
        raise TrainingError(f"{name}: checkpoint {last} is corrupt ({type(err).__name__}: {text}). {advice}") from None
    accelerator.print(f"[bidirect] {name}: resumed from {last} at step {state['step']}/{steps}")
    return {**fresh, **state}, last  # positions: 0 in a checkpoint of an older version


def _check_rng_states(path: Path) -> None:
    """The RNG states of one process, read as accelerate reads them (weights only) but failing loudly."""
    states = accelerate_load(path)
    if not isinstance(states, dict) or not {"random_state", "numpy_random_seed", "torch_manual_seed"} <= set(states):
        raise ValueError(f"{path.name} holds no RNG states")


def _load_scheduler(scheduler: Any, saved: Any, optimizer: Any, step: int) -> None:
    """The learning-rate schedule at the checkpoint's step, from the JSON state (never accelerate's pickle)."""
    if saved is None:
        # Checkpoints of versions that pickled the scheduler: the schedule is a function of the step, and the
        # optimizer's groups (just loaded) hold the rate of that step.
        saved = {**scheduler.state_dict(), "last_epoch": step, "_step_count": step + 1,
                 "_last_lr": [group["lr"] for group in optimizer.param_groups]}
    if not isinstance(saved, dict) or saved.get("last_epoch") != step:
        raise ValueError(f"its scheduler state is not at step {step}")
    scheduler.load_state_dict(saved)


def _micro_batches(loader: DataLoader, collate, accelerator: Accelerator, consumed: int) -> Iterator[dict]:
    """Micro-batches forever, pass after pass over the stream, starting after the ``consumed`` ones a resumed
    phase already trained on (per process)."""
    while True:
        epoch, offset = divmod(consumed, len(loader))
        loader.set_epoch(epoch)
        if hasattr(collate, "set_epoch"):  # an objective that draws random masks per epoch
            collate.set_epoch(epoch)
        for batch in accelerator.skip_first_batches(loader, offset) if offset else loader:
            consumed += 1
            yield batch


@contextlib.contextmanager
def disk_faults(path: Path) -> Iterator[None]:
    """A full disk (or quota, or I/O error) met by safetensors, torch or tokenizers while writing under ``path``
    raised as the `OSError` it is: they report it as their own exception with the OS error only in the text
    (``SafetensorError: ... No space left on device (os error 28)``), which reached the user as a traceback. The
    CLI answers an OSError of the machine in one line with the command that continues (exit 1)."""
    try:
        yield
    except OSError:
        raise
    except Exception as err:
        text = str(err)
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            if f"os error {code})" in text or os.strerror(code) in text:
                raise OSError(code, os.strerror(code), str(path)) from None
        # torch's writer says only "file write failed"; with next to no space left that is the disk being full
        if "file write failed" in text and shutil.disk_usage(path if path.exists() else path.parent).free < 2**26:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise


def _save_model(model: torch.nn.Module, accelerator: Accelerator, out_dir: Path, summary: PhaseSummary, fsdp: bool,
                finalize: Callable[[torch.nn.Module], PreTrainedModel] | None) -> None:
    """``out_dir/model`` (renamed into place when complete), then ``phase.json``; the checkpoints go."""
    unwrapped = accelerator.unwrap_model(model)
    # Under FSDP each process holds a shard: the full state dict is gathered by every process
    # together (a collective) and written by the main one, as in the accelerate examples.
    full_state = accelerator.get_state_dict(model) if fsdp else None
    if accelerator.is_main_process:
        tmp = out_dir / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        to_save = getattr(unwrapped, "_orig_mod", unwrapped)
        try:
            with disk_faults(tmp):
                if full_state is not None:
                    to_save.save_pretrained(tmp, state_dict=full_state)
                else:
                    (finalize(to_save) if finalize is not None else to_save).save_pretrained(tmp)
                write_manifest(tmp)  # models.load_backbone checks every file against it
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # half a model is of no use, and gives back the space it took
            raise
        shutil.rmtree(out_dir / MODEL_DIR, ignore_errors=True)
        os.replace(tmp, out_dir / MODEL_DIR)
        write_json_atomic(out_dir / DONE_FILE, asdict(summary))
        shutil.rmtree(out_dir / CHECKPOINTS_DIR, ignore_errors=True)  # the phase is done; they are dead weight
    accelerator.wait_for_everyone()


def save_checkpoint(accelerator: Accelerator, directory: Path, state: dict[str, Any]) -> Path:
    """accelerate's state of the phase and the trainer's counters (``state``: step, tokens, positions, seconds),
    written aside and renamed when complete."""
    final = directory / f"step_{state['step']:08d}"
    tmp = directory / f".tmp_step_{state['step']:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    with disk_faults(tmp):
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / STATE_FILE, state)
        if final.exists():  # a half-written leftover of a killed run (complete ones are resumed from)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in complete_checkpoints(directory, quiet=True)[:-2]:  # keep the last two
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def phase_done(out_dir: Path) -> PhaseSummary | None:
    path = out_dir / DONE_FILE
    if path.is_file() and (out_dir / MODEL_DIR).is_dir():
        advice = f"delete {out_dir} and resume with --resume to train that phase again (training is deterministic)"
        summary = read_json(path, "the summary of a finished phase", advice)
        try:
            return PhaseSummary(**summary)
        except TypeError:
            raise TrainingError(f"{path}: not a phase summary; {advice}") from None
    return None
