"""The trainer: every backbone learns, accumulation is exact, resume continues the same run."""

from __future__ import annotations

import json
import re

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed

from bidirect import trainer
from bidirect.config import MaskingConfig, ModelSize, TrainConfig
from bidirect.models import BACKBONES, backbone_kind, build_backbone, load_backbone
from bidirect.objectives import IGNORE, make_objective, tokenize_bios
from bidirect.trainer import LabelledHead, TrainingError, complete_checkpoints, token_loss_sum, train_phase

SIZE = ModelSize(layers=2, heads=2, width=32, mlp_width=64, context=128)


def _accelerator() -> Accelerator:
    return Accelerator(dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))


def _setup(name, study_data, tokenizer):
    objective = make_objective(backbone_kind(name), tokenizer, SIZE.context, MaskingConfig())
    stream = objective.bio_examples(tokenize_bios(study_data.bios["single"], tokenizer), seed=0)
    set_seed(0)
    return build_backbone(name, SIZE, tokenizer), objective, stream


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_learns(name, study_data, tokenizer, tmp_path):
    model, objective, stream = _setup(name, study_data, tokenizer)
    cfg = TrainConfig(steps=40, batch_size=8, lr=1e-2, min_lr=1e-3, warmup_steps=0, log_every=1)
    summary = train_phase(model, objective, stream, cfg, tmp_path, _accelerator(), name, seed=0)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert summary.steps == 40 and len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.92 * sum(losses[:5]) / 5, losses  # 40 steps: a clear, not a big, drop
    saved = load_backbone(tmp_path / "model").state_dict()  # the trained weights, not the initial ones
    assert (tmp_path / "phase.json").is_file() and saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["gpt2", "gbert-diffusion"])
def test_gradient_accumulation_is_exact(name, study_data, tokenizer, tmp_path):
    """Pitfall: hand-made accumulation. 1 x 8 and 4 x 2 micro-batches must give the same model,
    which needs the loss divided by the labelled tokens (or, masked diffusion, their summed weights) of the
    whole step (num_items_in_batch)."""
    results = []
    for accum in (1, 4):
        if name == "gbert-diffusion":
            model, objective, stream = _setup("gbert", study_data, tokenizer)
            objective = make_objective("masked", tokenizer, SIZE.context, MaskingConfig(rate="diffusion"))
        else:
            model, objective, stream = _setup(name, study_data, tokenizer)
        cfg = TrainConfig(steps=3, batch_size=8, grad_accum=accum, lr=1e-3, warmup_steps=0, clip_norm=0.0)
        train_phase(model, objective, stream, cfg, tmp_path / str(accum), _accelerator(), "t", seed=0)
        results.append(_params(load_backbone(tmp_path / str(accum) / "model")))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_labelled_head_gives_the_same_loss_and_gradients(name, study_data, tokenizer):
    """The LM head run at the labelled positions only: for every backbone the logits it returns are
    those positions' rows of the whole logits, so loss and gradients do not change."""
    model, objective, stream = _setup(name, study_data, tokenizer)
    batch = objective([stream[i] for i in range(4)])
    labels = batch.pop("labels")
    assert 0 < int((labels != IGNORE).sum()) < labels.numel()  # some positions have no label
    model.train()
    whole = model(**batch).logits
    assert whole.dim() == 3
    full = token_loss_sum(whole, labels)
    full.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with LabelledHead(model) as head:
        head.mask = labels != IGNORE
        logits = model(**batch).logits
        assert logits.shape == (int((labels != IGNORE).sum()), whole.shape[-1])
        assert head.mask is None and model(**batch).logits.dim() == 3  # a mask serves one forward pass
        torch.testing.assert_close(logits, whole[labels != IGNORE], rtol=1e-4, atol=1e-5)
        sparse = token_loss_sum(logits, labels)
        sparse.backward()
    torch.testing.assert_close(sparse, full, rtol=1e-5, atol=1e-5)
    for k, p in model.named_parameters():
        if k in grads:
            torch.testing.assert_close(p.grad, grads[k], rtol=1e-4, atol=1e-6)
    assert model(**batch).logits.dim() == 3  # the hook is gone once training is over


def test_labelled_head_trains_the_same_model(study_data, tokenizer, tmp_path):
    results = []
    for only in (True, False):
        model, objective, stream = _setup("gbert", study_data, tokenizer)
        cfg = TrainConfig(steps=3, batch_size=8, lr=1e-3, warmup_steps=0, labelled_logits_only=only)
        train_phase(model, objective, stream, cfg, tmp_path / str(only), _accelerator(), "t", seed=0)
        results.append(_params(load_backbone(tmp_path / str(only) / "model")))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-5)


class Interrupt(Exception):
    pass


def dying(collate, at: int):
    """``collate`` that raises `Interrupt` at its ``at``-th call: a phase killed mid-step, its checkpoints kept."""
    calls = {"n": 0}

    def collate_or_die(items):
        calls["n"] += 1
        if calls["n"] == at:
            raise Interrupt
        return collate(items)

    return collate_or_die


def test_resume_continues_the_same_schedule(study_data, tokenizer, tmp_path):
    """Killed after its step-4 checkpoint, a run resumes there and ends bit-identical."""
    cfg = TrainConfig(steps=8, batch_size=8, lr=1e-3, warmup_steps=2, checkpoint_every=4)

    model, objective, stream = _setup("gbert", study_data, tokenizer)  # masked: RNG state matters too
    train_phase(model, objective, stream, cfg, tmp_path / "straight", _accelerator(), "t", seed=0)
    straight = _params(load_backbone(tmp_path / "straight" / "model"))

    model, objective, stream = _setup("gbert", study_data, tokenizer)
    with pytest.raises(Interrupt):  # in step 6, after the checkpoint of step 4
        train_phase(model, dying(objective.collate, 6), stream, cfg, tmp_path / "resumed", _accelerator(), "t",
                    seed=0)
    assert [p.name for p in complete_checkpoints(tmp_path / "resumed" / "checkpoints")] == ["step_00000004"]
    torch.manual_seed(1234)  # a fresh process would not share the old RNG state: the checkpoint must restore it
    model, objective, stream = _setup("gbert", study_data, tokenizer)
    torch.manual_seed(999)
    summary = train_phase(model, objective, stream, cfg, tmp_path / "resumed", _accelerator(), "t", seed=0)
    assert summary.steps == 8
    done = json.loads((tmp_path / "straight" / "phase.json").read_text())
    assert (summary.tokens, summary.positions) == (done["tokens"], done["positions"]) and summary.positions > 0
    resumed = _params(load_backbone(tmp_path / "resumed" / "model"))
    for key in straight:
        torch.testing.assert_close(straight[key], resumed[key], rtol=0, atol=0)


def test_half_written_checkpoint_is_skipped(tmp_path, capsys):
    (tmp_path / "step_00000004").mkdir(parents=True)  # no trainer_state.json: killed mid-write
    (tmp_path / ".tmp_step_00000008").mkdir()
    assert complete_checkpoints(tmp_path) == []
    assert "skipping incomplete checkpoint" in capsys.readouterr().out


def test_non_finite_loss_stops_with_where(study_data, tokenizer, tmp_path):
    model, objective, stream = _setup("gpt2", study_data, tokenizer)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    cfg = TrainConfig(steps=3, batch_size=8, warmup_steps=0)
    with pytest.raises(TrainingError, match=r"non-finite loss at step 1; examples \[.*\].*last good checkpoint"):
        train_phase(model, objective, stream, cfg, tmp_path, _accelerator(), "t", seed=0)


def test_lora_under_fsdp_is_refused_before_training(tmp_path):
    """The LoRA merge needs the whole model, which no FSDP process holds: one clear error, nothing trained."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    fsdp = SimpleNamespace(num_processes=2, distributed_type=DistributedType.FSDP)
    with pytest.raises(TrainingError, match="LoRA fine-tuning under FSDP is not supported"):
        train_phase(torch.nn.Linear(2, 2), None, [], TrainConfig(), tmp_path, fsdp, "ft", seed=0,
                    finalize=lambda m: m)
    assert not (tmp_path / "model").exists()



def test_output_that_is_not_a_terminal_gets_plain_progress_lines(study_data, tokenizer, tmp_path, capsys):
    """A log file or a cluster job sees a line per logging step, not a live bar that prints at the end."""
    model, objective, stream = _setup("gpt2-rope", study_data, tokenizer)
    cfg = TrainConfig(steps=6, batch_size=4, warmup_steps=0, log_every=3)
    train_phase(model, objective, stream, cfg, tmp_path, _accelerator(), "single/gpt2-rope/pretrain", seed=0)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("single/gpt2-rope/pretrain step")]
    assert [ln.split()[2] for ln in lines] == ["3/6", "6/6"]
    assert all(re.search(r"loss \d+\.\d{4} [\d,]+ tok/s elapsed \d:\d\d:\d\d left \d:\d\d:\d\d$", ln) for ln in lines)
    assert lines[-1].endswith("left 0:00:00")


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run(study_data, tokenizer, tmp_path):
    """`compile: true` (torch.compile, inductor on the CPU) with the static shapes the study gives it trains the
    same model as eager mode: the same losses step by step, to float tolerance (the kernels sum in another order,
    over longer rows)."""
    losses = {}
    for compiled in (False, True):
        model, objective, stream = _setup("gpt2-rope", study_data, tokenizer)
        cfg = TrainConfig(steps=4, batch_size=4, warmup_steps=0, log_every=1, compile=compiled)
        out = tmp_path / str(compiled)
        collate = objective.with_static_shapes() if compiled else objective
        train_phase(model, collate, stream, cfg, out, _accelerator(), "t", seed=0)
        losses[compiled] = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
        saved = load_backbone(out / "model").state_dict()  # saved without the compile wrapper's _orig_mod. names
        trained = {k.removeprefix("_orig_mod."): v for k, v in model.state_dict().items()}
        assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k].cpu()) for k in saved)
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_losses_are_read_at_logging_steps_only(study_data, tokenizer, tmp_path, monkeypatch):
    """No host synchronisation per micro-batch: a step leaves its loss and token count on the device, and the
    trainer reads them (and checks them for non-finite values) at logging steps and before a checkpoint."""
    reads, real = [], trainer.PendingLosses.read

    def spy(self, *args):
        reads.append([step for step, *_ in self.steps])
        assert all(isinstance(loss, torch.Tensor) for _, loss, *_ in self.steps)
        return real(self, *args)

    monkeypatch.setattr(trainer.PendingLosses, "read", spy)
    model, objective, stream = _setup("gbert", study_data, tokenizer)
    cfg = TrainConfig(steps=10, batch_size=8, grad_accum=2, warmup_steps=0, log_every=4, checkpoint_every=6)
    summary = train_phase(model, objective, stream, cfg, tmp_path, _accelerator(), "t", seed=0)
    assert reads == [[1, 2, 3, 4], [5, 6], [7, 8], [9, 10]]
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [4, 8, 10] and logged[-1]["loss"] == summary.final_loss
    assert summary.tokens > 0


def test_loader_workers_draw_the_same_masks(study_data, tokenizer, tmp_path, monkeypatch):
    """Masks are a function of (seed, epoch, row): collated in two worker processes (as on CUDA), over several
    passes of the stream, a masked model trains bit-identically to the main process collating."""
    cfg = TrainConfig(steps=12, batch_size=8, lr=1e-3, warmup_steps=0)
    results = []
    for workers in (0, 2):
        monkeypatch.setattr(trainer, "loader_workers", lambda device, n=workers: n)
        model, objective, stream = _setup("gbert", study_data, tokenizer)
        stream = stream.select(range(24))  # 3 micro-batches a pass: 4 passes, 4 epochs of masks
        train_phase(model, objective, stream, cfg, tmp_path / str(workers), _accelerator(), "t", seed=0)
        results.append(_params(load_backbone(tmp_path / str(workers) / "model")))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=0, atol=0)


def test_positions_count_every_computed_token_for_the_flops(study_data, tokenizer, tmp_path):
    """A phase counts the token positions its model computed (padding included): with static shapes, every
    batch of the causal windows is the whole context, so 5 steps of 8 windows are 5 x 8 x 128 positions."""
    model, objective, stream = _setup("gpt2-rope", study_data, tokenizer)
    assert max(len(ids) for ids in stream["input_ids"]) > 64  # so every padded batch is 128 long
    cfg = TrainConfig(steps=5, batch_size=8, grad_accum=2, warmup_steps=0, log_every=2)
    summary = train_phase(model, objective.with_static_shapes(), stream, cfg, tmp_path, _accelerator(), "t", seed=0)
    assert summary.positions == 5 * 8 * SIZE.context
    assert 0 < summary.tokens < summary.positions  # labelled tokens: the causal targets, no padding


def test_weighted_tokens_give_the_weighted_mean_loss(study_data, tokenizer):
    """A batch with ``weights`` (masked diffusion's 1/t) is trained on sum(w * CE) / sum(w): the step's reported
    loss and its division are the weighted ones, its token count stays the number of labelled tokens."""
    objective = make_objective("masked", tokenizer, SIZE.context, MaskingConfig(rate="diffusion", span="attribute"))
    stream = objective.bio_examples(tokenize_bios(study_data.bios["single"], tokenizer, values=True), seed=0)
    batch = objective.collate([{**stream[i], "index": i} for i in range(8)])
    set_seed(0)
    model = build_backbone("gbert", SIZE, tokenizer)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "index", "weights")}
    with torch.no_grad():
        logits = model(**inputs).logits
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none")
    assert token_loss_sum(logits, batch["labels"], batch["weights"]).item() == pytest.approx(
        (ce * batch["weights"]).sum().item(), rel=1e-5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    accelerator = _accelerator()
    loss_sum, num_items, count = trainer.train_step(model, [batch], accelerator, optimizer, TrainConfig())
    assert num_items.item() == pytest.approx(batch["weights"].sum().item())
    assert count.item() == (batch["labels"] != IGNORE).sum().item() < num_items.item()  # weights are >= 1
    assert loss_sum.item() == pytest.approx((ce * batch["weights"]).sum().item(), rel=1e-4)
