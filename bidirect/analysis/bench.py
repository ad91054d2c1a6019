"""`bidirect bench`: training throughput of each backbone, the package's path against a plain loop.

For every backbone, ways of training the same network (same init, same data) are timed:

- ``package``: what ``bidirect run`` does. The trainer's loader (collation and masking in worker
  processes and pinned memory on CUDA) and the objective's collator (causal: documents packed
  into full windows of ``context`` tokens with restarting position ids; masked: one bio per row
  with whole-word masking drawn by tensor operations), SDPA attention, bf16 autocast on CUDA
  through accelerate's ``mixed_precision``, fused AdamW on CUDA; the step is the trainer's
  (`trainer.train_step`), which leaves the loss on the device.
- ``compiled`` (``--compile``): the same under ``torch.compile``, with batches padded to the
  few static lengths a compiled study uses (`objectives.STATIC_BUCKET`).
- ``plain``: the loop one writes first. One document per row padded to the longest in the batch,
  fp32 (TF32 off, torch's default), eager attention, ``torch.optim.AdamW`` with its defaults.

Both see about the same number of real tokens per optimizer step (``batch`` windows of
``context`` tokens; the per-document paths take as many documents as fill that on average), so
tokens/s compare like for like. Real tokens are the non-pad input tokens, counted the same way
for both. The first ``warmup`` steps (allocation, autotuning, compilation) are not timed, and on
CUDA the clock stops only after ``torch.cuda.synchronize``. The time the loop waits for the
next batch is inside the timing and reported as ``host_share`` (the rest is ``device_share``):
a host share above a few percent means the device sits idle waiting for data.

Model FLOPs per token (Kaplan et al. 2020, as in Chinchilla and nanoGPT's MFU)::

    FLOPs/token = 6 * N_nonembedding + 6 * N_lm_head + 12 * layers * context * width

6N for the forward and backward matmuls of every non-embedding parameter, 6 V W for the LM
head (tied to the input embedding, so not in N_nonembedding, but a matmul all the same), and
12 L T W for the attention scores and their weighted sum at the nominal context T. The same
number is used for both paths (as MFU conventionally does), so their MFU ratio is their tokens/s
ratio; it overstates the attention work of short padded documents and of block-diagonal packed
windows, which is small next to 6N at these sizes. The package path runs the LM head only at
labelled positions (`trainer.LabelledHead`; about 15% of a masked model's), and is still credited
the head at every position, like the plain path: for masked models its FLOP/s and MFU are rates
equivalent to the plain path's work, which is what a comparison of the two needs. MFU divides
achieved FLOP/s by the device's dense bf16 peak (H100 SXM / H200 989 TFLOP/s, H100 PCIe 756,
A100 312); a CPU has no listed peak, so there the peak is measured: fp32 matmuls at the model's shapes
(`cpu_matmul_tflops`), unless ``--peak-tflops`` is given.
"""

from __future__ import annotations

import dataclasses
import gc
import platform
import re
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from datasets import concatenate_datasets
from rich import box
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from bidirect.config import (
    MAX_BATCH,
    Augmentation,
    ConfigError,
    DataConfig,
    EvalConfig,
    MaskingConfig,
    ModelSize,
    StudyConfig,
    TrainConfig,
    validate,
)
from bidirect.models import FLOPS_FORMULA, flops_per_token
from bidirect.protocol import RULES

# Model sizes by name, with the default batch (windows of `context` tokens per step) for each.
PRESETS: dict[str, tuple[ModelSize, int]] = {
    "tiny": (ModelSize(layers=2, heads=2, width=32, mlp_width=64, context=64), 4),  # CI
    "quick": (ModelSize(), 32),  # the quick study's model: config.py's defaults
    "gpt2-small": (ModelSize(layers=12, heads=12, width=768, mlp_width=3072, context=512), 32),  # the paper's
    "bert-base": (ModelSize(layers=12, heads=12, width=768, mlp_width=3072, context=512), 32),  # same size
}
DEFAULT_BATCH = 32
# Upper bounds of the options that size work or memory: a typo past them would run out of memory (--eval-items 1e12
# built a list of a trillion items) or time rather than stop with a message.
MAX_OPTION = {"batch": MAX_BATCH, "eval_batch": MAX_BATCH, "eval_items": 10_000_000, "steps": 1_000_000,
              "warmup": 1_000_000, "threads": 4096}
SIZE_KEYS = {"layers": "layers", "heads": "heads", "width": "width", "mlp": "mlp_width", "mlp_width": "mlp_width",
             "context": "context"}
DEFAULT_BACKBONES = ("gpt2-rope", "gbert", "bert")

# Dense bf16 tensor-core peaks in TFLOP/s from NVIDIA's datasheets (no 2:4 sparsity); the first
# name that occurs in the device name wins, so the more specific ones come first.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("A100", 312.0),
)


# --------------------------------------------------------------------------- inputs


def parse_size(spec: str) -> tuple[ModelSize, int]:
    """A model size and its default batch from a preset name, ``LxW`` (heads = W / 64, MLP 4 W,
    context 256) or ``key=value,...`` with keys layers, heads, width, mlp, context (the rest from
    ``ModelSize``'s defaults, MLP 4 x width unless given)."""
    spec = spec.strip()
    allowed = f"a preset ({', '.join(PRESETS)}), LxW like 8x512, or layers=8,heads=8,width=512,mlp=2048,context=256"
    if spec in PRESETS:
        size, batch = PRESETS[spec]
        return replace(size), batch
    if m := re.fullmatch(r"(\d+)x(\d+)", spec):
        layers, width = int(m.group(1)), int(m.group(2))
        size = ModelSize(layers=layers, heads=max(1, width // 64), width=width, mlp_width=4 * width, context=256)
    elif "=" in spec:
        values: dict[str, int] = {}
        for part in spec.split(","):
            key, _, value = part.partition("=")
            key = key.strip()
            if key not in SIZE_KEYS:
                raise ConfigError(f"--size {spec!r}: unknown key {key!r}; allowed keys: layers, heads, width, mlp, "
                                  "context")
            if not value.strip().isdigit():
                raise ConfigError(f"--size {spec!r}: {key} must be a positive integer, got {value!r}")
            values[SIZE_KEYS[key]] = int(value)
        if "width" in values and "mlp_width" not in values:
            values["mlp_width"] = 4 * values["width"]
        size = ModelSize(**values)
    else:
        raise ConfigError(f"--size {spec!r}: not a size; expected {allowed}")
    try:  # the study's own range checks, so a size that benches is a size that runs
        validate(StudyConfig(model=size))
    except ConfigError as err:
        raise ConfigError(f"--size {spec!r}: {err}") from None
    return size, DEFAULT_BATCH


def check_backbones(names: Sequence[str]) -> list[str]:
    from bidirect.models import BACKBONES

    for name in names:
        if name not in BACKBONES:
            raise ConfigError(f"--backbone: unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--backbone: listed twice in {list(names)}")
    return list(names)


@dataclass
class BenchConfig:
    backbones: list[str] = field(default_factory=lambda: list(DEFAULT_BACKBONES))
    size: ModelSize = field(default_factory=ModelSize)
    size_name: str = "quick"
    batch: int = DEFAULT_BATCH  # windows of `context` tokens per optimizer step
    steps: int = 20  # timed steps per path
    warmup: int = 5  # untimed steps before them
    individuals: int = 1000
    augmentation: str = "multi5+permute"
    vocab_size: int = 4096
    mixed_precision: str = "auto"
    compile: bool = False  # also time the package path under torch.compile ("compiled")
    eval_batch: int = 256
    eval_items: int = 0  # 0: P_test's QA as generated; else repeated to this many items
    peak_tflops: float | None = None  # None: look it up from the device name
    threads: int = 0  # torch's CPU threads; 0: torch's default (one per core)
    seed: int = 0

    def check(self) -> BenchConfig:
        for name in ("batch", "steps", "individuals", "vocab_size", "eval_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "threads", "eval_items"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 0, got {getattr(self, name)}")
        for name, bound in MAX_OPTION.items():
            if getattr(self, name) > bound:
                raise ConfigError(f"--{name.replace('_', '-')}: at most {bound:,}, got {getattr(self, name):,}")
        if self.peak_tflops is not None and not 0 < self.peak_tflops < float("inf"):  # NaN fails this too
            raise ConfigError(f"--peak-tflops: must be a finite number > 0, got {self.peak_tflops}")
        Augmentation.parse(self.augmentation, "--augmentation")
        validate(StudyConfig(data=DataConfig(individuals=self.individuals, augmentations=[self.augmentation])))
        check_backbones(self.backbones)
        return self


# --------------------------------------------------------------------------- device and FLOPs


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # the CPU's model name where Linux tells it; the figures depend on it
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()}"


def peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of a GPU from its name; None when unknown (every CPU)."""
    for key, peak in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def cpu_matmul_tflops(size: ModelSize, tokens: int, repeats: int = 20) -> dict[str, float]:
    """What this CPU's fp32 matmuls reach at the threads torch uses (TFLOP/s, the best of ``repeats``): at the model's
    two shapes, a step's ``tokens`` through the MLP (width x mlp_width) and through one attention projection
    (width x width), and on a large square (2048) for the machine's own ceiling. A CPU has no datasheet peak; the
    faster model shape is the ceiling its MFU is taken against."""
    shapes = {"mlp": (tokens, size.width, size.mlp_width), "projection": (tokens, size.width, size.width),
              "square_2048": (2048, 2048, 2048)}
    out = {}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)  # the first call allocates and warms the caches
        best = float("inf")
        for _ in range(repeats if name != "square_2048" else max(3, repeats // 4)):
            started = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - started)
        out[name] = 2 * m * k * n / best / 1e12
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    # ru_maxrss cannot be reset: it is the process's peak so far (KiB on Linux, bytes on macOS).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "process max RSS so far"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the two paths


def _forever(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from loader


def _loader(stream, per_step: int, collate: Callable, seed: int,
            device: torch.device | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Batches forever. With ``device``: the trainer's loader (`trainer.make_loader`: worker processes and pinned
    memory on CUDA); without, collated on the main process, as a first training loop does."""
    from bidirect.trainer import make_loader

    if len(stream) < per_step:
        raise ConfigError(f"only {len(stream)} training examples for {per_step} per step; raise --individuals "
                          "or lower --batch")
    torch.manual_seed(seed)  # the shuffle order
    if device is not None:
        return _forever(make_loader(stream, per_step, collate, device))
    return _forever(DataLoader(stream, batch_size=per_step, shuffle=True, collate_fn=collate, drop_last=True))


def _plain_causal_collate(pad: int, eos: int, context: int) -> Callable:
    """One bio per row, right-padded, with an attention mask: next-token labels, none on padding."""
    from bidirect.objectives import IGNORE

    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        docs = [(list(it["input_ids"]) + [eos])[:context] for it in items]
        length = max(len(d) for d in docs)
        ids = torch.full((len(docs), length), pad, dtype=torch.long)
        labels = torch.full((len(docs), length), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(docs), length), dtype=torch.long)
        for i, d in enumerate(docs):
            ids[i, : len(d)] = torch.tensor(d)
            labels[i, : len(d) - 1] = torch.tensor(d[1:])
            mask[i, : len(d)] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def _time(step: Callable[[dict[str, torch.Tensor]], Any], batches: Iterator[dict[str, torch.Tensor]], steps: int,
          warmup: int, device: torch.device, pad: int) -> dict[str, Any]:
    """Run ``warmup`` untimed steps, then time ``steps``; count real (non-pad) input tokens.

    The host's share is the time the loop waits for the next batch (collation, on the main process or for the
    loader's workers); the rest is the step itself, the device's share. Per-step times of a path that does not
    wait for the device each step (the package's) are the host's, so only their mean over the timed steps, which
    ends with a synchronisation, is the device's rate."""
    for _ in range(warmup):
        step(next(batches))
    _sync(device)
    _reset_peak_memory(device)
    real = slots = rows = 0
    data_seconds, loss, step_seconds = 0.0, float("nan"), []
    started = time.perf_counter()
    for _ in range(steps):
        fetched = time.perf_counter()
        batch = next(batches)
        data_seconds += time.perf_counter() - fetched
        ids = batch["input_ids"]
        real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else int((ids != pad).sum())
        slots, rows = slots + ids.numel(), rows + ids.shape[0]
        loss = step(batch)
        step_seconds.append(time.perf_counter() - fetched)
    _sync(device)
    loss = float(loss)
    seconds = time.perf_counter() - started
    memory, memory_kind = _peak_memory(device)
    return {
        "tokens_per_second": real / seconds,
        "real_tokens_per_step": real / steps,
        "sequences_per_step": rows / steps,
        "padding_share": 1 - real / slots,
        "step_ms": 1000 * seconds / steps,
        "step_ms_median": 1000 * sorted(step_seconds)[len(step_seconds) // 2],  # robust to a busy neighbour
        "host_share": data_seconds / seconds,
        "device_share": 1 - data_seconds / seconds,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "seconds": seconds,
        "final_loss": loss,
        "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
    }


def _package_path(model, accelerator, train: TrainConfig, compile_model: bool) -> tuple[Callable, Any]:
    """The trainer's step (`trainer.train_step`) with one process and no accumulation, without its checkpointing
    and logging. The loss stays on the device, as in the trainer, so steps are queued without waiting."""
    from bidirect.trainer import LabelledHead, make_optimizer, train_step, use_labelled_head

    device = accelerator.device
    train = replace(train, grad_accum=1, compile=compile_model)
    optimizer = make_optimizer(model, train, fused=device.type == "cuda")
    head = LabelledHead(model) if use_labelled_head(train, accelerator) else None
    if compile_model:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss_sum, num_items, _ = train_step(model, [batch], accelerator, optimizer, train, head)
        return loss_sum / num_items.clamp(min=1)

    return step, model


def _plain_path(model, device: torch.device, train: TrainConfig) -> Callable:
    """fp32, eager attention, default AdamW: what a first training loop looks like."""
    from bidirect.objectives import IGNORE
    from bidirect.trainer import token_loss_sum

    model.set_attn_implementation("eager")
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)

    def step(batch: dict[str, torch.Tensor]) -> float:
        labels = batch.pop("labels")
        num_items = int((labels != IGNORE).sum())
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = token_loss_sum(model(**batch).logits, labels.to(device)) / max(num_items, 1)
        loss.backward()
        if train.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


# --------------------------------------------------------------------------- the benchmark


def _time_eval(model, kind: str, tokenizer, data, augmentation: str, cfg: BenchConfig, accelerator,
               rule: str = "free") -> dict[str, Any]:
    """The evaluator on the QA level of P_test, as a study reads it: a masked model choosing the answer's length by
    ``rule`` (``free``: one forward pass per candidate length; ``window``: one pass over the answer window)."""
    from bidirect.evaluate import evaluate_model, max_answer_tokens

    device = accelerator.device
    _sync(device)
    started = time.perf_counter()
    scores = evaluate_model(model, kind, tokenizer, data, augmentation,
                            EvalConfig(batch_size=cfg.eval_batch, masked_length=rule), accelerator, levels=("qa_test",),
                            answer=RULES[rule].answers[0])
    _sync(device)
    seconds = time.perf_counter() - started
    items = int(scores["qa_test"]["n"])
    return {"level": "qa_test", "rule": rule if kind == "masked" else None, "items": items, "seconds": seconds,
            "qa_per_second": items / seconds, "batch_size": cfg.eval_batch,
            "forward_passes_per_batch": max_answer_tokens(tokenizer, data)
            if kind == "masked" and RULES[rule].reads == "lengths" else 1}


def _figures(timing: dict[str, Any], flops: int, peak: float | None) -> dict[str, Any]:
    tflops = timing["tokens_per_second"] * flops / 1e12
    return {**timing, "tflops": tflops, "mfu": tflops / peak if peak else None}


def run_bench(cfg: BenchConfig, console: Console | None = None,
              partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Generate a bioS corpus, then time the paths of every backbone; the report as a dict, also handed to
    ``partial`` after each backbone (``complete`` false until the last)."""
    cfg.check()
    # On a CPU shared with other jobs, torch's default of one thread per core spins against them and
    # a step can take 50x longer; --threads 1 measures the code instead. Restored afterwards.
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_bench(cfg, console, partial)
    finally:
        torch.set_num_threads(threads)


def _run_bench(cfg: BenchConfig, console: Console | None,
               partial: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    import accelerate
    import transformers

    from bidirect.data.generate import generate
    from bidirect.models import backbone_kind, build_backbone, parameter_counts
    from bidirect.objectives import make_objective, tokenize_bios
    from bidirect.study import make_accelerator, tokenizer_corpus
    from bidirect.tokenizer import train_tokenizer

    say = console.print if console is not None else (lambda *a, **k: None)
    aug = Augmentation.parse(cfg.augmentation, "--augmentation")

    # The corpus comes from the package's own generator: packing and padding only mean something
    # with the real distribution of document lengths, which a random-token stream does not have.
    started = time.perf_counter()
    # P_train and P_test halves as before P_val existed: the evaluator is timed on P_test
    data = generate(DataConfig(individuals=cfg.individuals, p_val=0.0, augmentations=[aug.name]), [aug], cfg.seed)
    generate_seconds = time.perf_counter() - started
    started = time.perf_counter()
    tokenizer = train_tokenizer(tokenizer_corpus(data), "bpe", cfg.vocab_size)
    tokenizer_seconds = time.perf_counter() - started
    started = time.perf_counter()
    bios = tokenize_bios(data.bios[aug.name], tokenizer)
    tokenize_seconds = time.perf_counter() - started

    size, ctx = cfg.size, cfg.size.context
    lengths = [min(len(ids) + 1, ctx) for ids in bios["input_ids"]]  # + end-of-text for causal documents
    mean_doc = sum(lengths) / len(lengths)
    docs_per_step = max(1, round(cfg.batch * ctx / mean_doc))  # per-document paths: about batch x context tokens
    study = StudyConfig(model=size, mixed_precision=cfg.mixed_precision)
    accelerator = make_accelerator(study)
    device = accelerator.device
    name = device_name(device)
    peak = cfg.peak_tflops or peak_tflops(name)
    matmul = cpu_matmul_tflops(size, cfg.batch * ctx) if device.type == "cpu" else None
    if peak is None and matmul is not None:
        peak = max(matmul["mlp"], matmul["projection"])
    train = study.pretrain
    say(f"[bold]bench[/bold] on {name}: {cfg.size_name} ({size.layers} layers x {size.width}, {size.heads} heads, "
        f"context {ctx}), {len(bios)} bios ({aug.name}, {cfg.individuals} people) in {generate_seconds:.1f} s, "
        f"mixed precision {accelerator.mixed_precision}")

    eval_data = data
    if cfg.eval_items:  # P_test's QA repeated to that many items: the evaluator's rate at scale
        repeats = -(-cfg.eval_items // len(data.qa_test))
        eval_data = dataclasses.replace(data, qa_test=concatenate_datasets([data.qa_test] * repeats).select(
            range(cfg.eval_items)))

    results: dict[str, Any] = {}
    report: dict[str, Any] = {
        "device": name,
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__},
        "config": {**asdict(cfg), "size": asdict(size)},
        "flops_formula": FLOPS_FORMULA,
        "flops_note": "per token, forward + backward, attention at the nominal context (Kaplan et al. 2020); "
                      "the LM head counted at every position on every path, though on a CPU the package path runs "
                      "it at labelled positions only (trainer.LabelledHead)",
        "peak_tflops": peak,
        "peak_source": "--peak-tflops" if cfg.peak_tflops else "measured: fp32 matmul at the model's shapes"
        if matmul is not None else ("device name" if peak else None),
        "cpu_matmul_tflops": matmul,
        "data": {"individuals": cfg.individuals, "augmentation": aug.name, "bios": len(bios),
                 "vocab_size": len(tokenizer), "mean_document_tokens": mean_doc,
                 "documents_per_step": docs_per_step, "generate_seconds": generate_seconds,
                 "tokenizer_seconds": tokenizer_seconds, "tokenize_seconds": tokenize_seconds},
        "backbones": results,
        "complete": False,  # True once every backbone is timed
    }
    for backbone in cfg.backbones:
        kind = backbone_kind(backbone)
        window_figures = None
        objective = make_objective(kind, tokenizer, ctx, MaskingConfig(), cfg.seed)
        started = time.perf_counter()
        stream = objective.bio_examples(bios, cfg.seed)
        stream_seconds = time.perf_counter() - started
        pad = tokenizer.pad_token_id

        # package: packed windows (causal) or one masked bio per row, as the study trains them; eager, then
        # (--compile) under torch.compile with the static shapes the study gives a compiled model
        per_step = cfg.batch if kind == "causal" else docs_per_step
        timed: dict[str, dict[str, Any]] = {}
        for path, compiled in (("package", False), ("compiled", True))[: 2 if cfg.compile else 1]:
            torch.manual_seed(cfg.seed)
            model = build_backbone(backbone, size, tokenizer)
            flops = flops_per_token(model, size)
            counts = parameter_counts(model)
            attention = model.config._attn_implementation
            say(f"[bold]{backbone}[/bold] ({kind}): {path} path")
            step, model = _package_path(model, accelerator, train, compiled)
            collate = objective.with_static_shapes() if compiled else objective
            timed[path] = _time(step, _loader(stream, per_step, collate, cfg.seed, device), cfg.steps, cfg.warmup,
                                device, pad)
            timed[path].update(attention=attention, precision=accelerator.mixed_precision, compile=compiled,
                               optimizer="AdamW fused" if device.type == "cuda" else "AdamW foreach",
                               batching="packed windows" if kind == "causal" else "one masked bio per row")
            if not compiled:  # the evaluator on P_test's QA, with the model just trained
                eval_figures = _time_eval(model, kind, tokenizer, eval_data, aug.name, cfg, accelerator)
                if kind == "masked":  # a model fine-tuned with the answer window reads it in one pass
                    window_figures = _time_eval(model, kind, tokenizer, eval_data, aug.name, cfg, accelerator,
                                                "window")
            del model, step
            accelerator.free_memory()
            _free(device)

        # plain: the same network and init, one padded document per row, fp32, eager attention
        say(f"[bold]{backbone}[/bold] ({kind}): plain path")
        torch.manual_seed(cfg.seed)
        model = build_backbone(backbone, size, tokenizer)
        step = _plain_path(model, device, train)
        if kind == "causal":
            plain_stream = bios.select_columns(["input_ids"])
            collate = _plain_causal_collate(pad, tokenizer.eos_token_id, ctx)
        else:
            plain_stream, collate = stream, objective  # masking is the objective, not an optimization
        plain = _time(step, _loader(plain_stream, docs_per_step, collate, cfg.seed), cfg.steps, cfg.warmup, device,
                      pad)
        plain.update(attention=model.config._attn_implementation, precision="fp32", compile=False,
                     optimizer="AdamW (torch defaults)", batching="one padded document per row")
        del model, step
        _free(device)

        results[backbone] = {
            "kind": kind,
            "parameters": counts,
            "flops_per_token": flops,
            "stream_seconds": stream_seconds,
            **{path: _figures(f, flops["total"], peak) for path, f in timed.items()},
            "plain": _figures(plain, flops["total"], peak),
            "speedup": timed["package"]["tokens_per_second"] / plain["tokens_per_second"],
            "eval": eval_figures,
            **({"eval_window": window_figures} if kind == "masked" else {}),
        }
        if partial is not None:  # a bench cut short by a time limit keeps the backbones it finished
            partial(report)

    report["complete"] = True
    if partial is not None:
        partial(report)
    return report


# --------------------------------------------------------------------------- output


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _qa_rate(r: dict[str, Any]) -> str:
    """QA items per second; a masked backbone's as ``free / window`` (every candidate length / the answer window)."""
    rate = f"{r['eval']['qa_per_second']:,.0f}"
    return f"{rate} / {r['eval_window']['qa_per_second']:,.0f}" if "eval_window" in r else rate


def _peak_words(report: dict[str, Any]) -> str:
    peak, matmul = report["peak_tflops"], report.get("cpu_matmul_tflops")
    if peak is None:
        return "unknown, MFU not computed"
    if matmul is not None and report.get("peak_source", "").startswith("measured"):
        gflops = {k: f"{v * 1e3:.0f}" for k, v in matmul.items()}
        return (f"{peak * 1e3:.0f} GFLOP/s, this CPU's fp32 matmul at the model's shapes (MLP {gflops['mlp']}, "
                f"projection {gflops['projection']}; a 2048 square {gflops['square_2048']}): "
                "MFU here is the share of that ceiling")
    return f"{peak} TFLOP/s"


def print_bench(console: Console, report: dict[str, Any]) -> None:
    table = Table(title=f"bidirect bench: {report['device']} ({report['config']['size_name']})", box=box.SIMPLE_HEAD,
                  padding=(0, 1))
    for col in ("backbone", "path", "tokens/s", "pad", "ms/step", "host", "TFLOP/s", "MFU", "peak mem", "speed-up",
                "QA/s"):
        table.add_column(col, justify="left" if col in ("backbone", "path") else "right", no_wrap=True)
    for backbone, r in report["backbones"].items():
        paths = [path for path in ("package", "compiled", "plain") if path in r]
        for path in paths:
            f, first = r[path], path == paths[0]
            table.add_row(
                backbone if first else "", path, f"{f['tokens_per_second']:,.0f}", f"{f['padding_share']:.0%}",
                f"{f['step_ms']:,.1f}", f"{f['host_share']:.1%}", f"{f['tflops']:.3g}",
                "-" if f["mfu"] is None else f"{f['mfu']:.1%}", _mib(f["peak_memory_bytes"]),
                f"{r['speedup']:.2f}x" if first else "", _qa_rate(r) if first else "",
            )
    if console.width < 120 and not console.is_terminal:  # a pipe's 80 columns would cut the numbers
        console = Console(file=console.file, width=120)
    console.print(table)
    d = report["data"]
    console.print(f"FLOPs/token = {report['flops_formula']} (nominal context; same for every path). "
                  f"Peak: {_peak_words(report)}. Data: {d['bios']} bios generated in "
                  f"{d['generate_seconds']:.2f} s, tokenizer {d['tokenizer_seconds']:.2f} s. "
                  f"'host': the share of a step spent waiting for the next batch; the rest is the device's. "
                  f"QA/s: the evaluator on {next(iter(report['backbones'].values()))['eval']['items']:,} "
                  f"P_test QA items (masked: choosing the length among every candidate / from the answer window).",
                  highlight=False)


def default_out(report: dict[str, Any]) -> Path:
    """runs/bench/<device>.json: the GPU's name (nvidia-h100-80gb-hbm3), or cpu."""
    if report["device_type"] != "cuda":
        return Path("runs") / "bench" / "cpu.json"
    slug = re.sub(r"[^a-z0-9]+", "-", report["device"].lower()).strip("-") or "cuda"
    return Path("runs") / "bench" / f"{slug}.json"


def write_report(report: dict[str, Any], path: Path) -> None:
    from bidirect.rundir import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report)
