"""Downstream proxy for sign tokens: can a small causal LM read text off them?

A randomly initialised Llama-style LM (a few layers, small width, nothing downloaded)
learns ``[bos] sign tokens <SEP> text [eos]`` (loss on the text, plus a weighted
next-token loss on the sign prefix), then greedy decoding from ``[bos] sign tokens <SEP>``
is scored by its error rate over words (or characters). Two controls train the same LM from the same initial weights on the same
texts: ``shuffled`` (each video's sign tokens in random order: what a bag of tokens
tells) and ``wrong video`` (the tokens of another video: what the text prior alone
reaches, i.e. chance). The margin of the real tokens over both is the figure that
the tokens carry the sign.
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from src.tokens.llm import SignVocab, add_sign_tokens, build_example, pad_batch, require_hf
from src.tokens.rle import is_nc

log = logging.getLogger(__name__)

CONDITIONS = ("tokens", "shuffled", "wrong video")
SPECIALS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


@dataclass
class Item:
    """One video: its LLM prefix tokens and its target text as units (words or characters)."""

    name: str
    tokens: list[str]
    units: list[str]
    signer: int | None = None


@dataclass
class LMSettings:
    """The proxy LM and its training (defaults: a few minutes on one CPU thread)."""

    layers: int = 2
    width: int = 128
    heads: int = 4
    steps: int = 500
    batch_size: int = 16
    lr: float = 3e-3
    eval_every: int = 25
    seed: int = 0
    # Weight of the next-sign-token loss on the prefix. Without it, a few hundred steps on
    # ~1000 videos only memorise the training set (held-out WER stayed ~0.9 on the demo
    # checkpoint); with 0.3 the embeddings of codes that move alike are learnt from the
    # stream itself and the text generalises.
    prefix_weight: float = 0.3


@dataclass
class ConditionResult:
    """Loss curves and scores of one condition; ``scores[eval set] = {error_rate, exact, n}``."""

    curve: dict[str, list[float]] = field(default_factory=lambda: {"step": [], "train": [], "val": []})
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    examples: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # (name, ref, hyp)
    seconds: float = 0.0


def text_units(text: str, unit: str) -> list[str]:
    """``word``: whitespace-separated words; ``char``: every non-space character (Chinese text)."""
    if unit == "word":
        return text.split()
    if unit == "char":
        return [c for c in text if not c.isspace()]
    raise ValueError(f"unit must be word or char, got {unit!r}")


def guess_unit(texts: list[str]) -> str:
    """``word`` when most texts contain spaces, else ``char`` (e.g. CSL-Daily's Chinese text)."""
    spaced = sum(1 for t in texts if " " in t.strip())
    return "word" if spaced * 2 >= len(texts) else "char"


def make_tokenizer(vocab: SignVocab, train: list[Item]) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over the training units, plus the sign vocabulary.

    Units unseen in training map to ``<unk>`` (so they always count as errors).
    """
    require_hf()
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    counts = Counter(u for item in train for u in item.units)
    words = list(SPECIALS.values()) + sorted(counts, key=lambda u: (-counts[u], u))
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=SPECIALS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIALS)
    add_sign_tokens(tokenizer, vocab)
    return tokenizer


def control(items: list[Item], condition: str, seed: int) -> list[Item]:
    """The items as a condition sees them: as they are, tokens shuffled, or another video's tokens."""
    rng = random.Random(seed)
    if condition == "tokens":
        return items
    if condition == "shuffled":
        return [Item(i.name, rng.sample(i.tokens, len(i.tokens)), i.units, i.signer) for i in items]
    if condition == "wrong video":
        if len(items) < 2:
            raise ValueError("the wrong-video control needs at least 2 videos")
        order = rng.sample(range(len(items)), len(items))
        donor = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}  # one cycle: never itself
        return [Item(i.name, items[donor[k]].tokens, i.units, i.signer) for k, i in enumerate(items)]
    raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two unit sequences (substitutions, insertions, deletions)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def error_rate(hyps: list[list[str]], refs: list[list[str]]) -> float:
    """Corpus WER/CER: total edit distance over total reference length."""
    total = sum(len(r) for r in refs)
    return sum(edit_distance(h, r) for h, r in zip(hyps, refs)) / max(total, 1)


def new_lm(tokenizer: Any, s: LMSettings, max_len: int) -> Any:
    """A randomly initialised Llama-style causal LM; the same weights for the same seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=s.width, intermediate_size=2 * s.width,
        num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.heads,
        max_position_embeddings=max_len, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(s.seed)
    return LlamaForCausalLM(config)


def _lr(step: int, s: LMSettings) -> float:
    """Linear warm-up over the first 10% of steps, then cosine down to 10% of ``lr``."""
    warm = max(1, s.steps // 10)
    if step < warm:
        return s.lr * (step + 1) / warm
    return s.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, s.steps - warm))))


def batch_loss(model: Any, batch: dict[str, torch.Tensor], prefix_weight: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The training objective, the next-token cross-entropy over the labelled (text)
    positions, and their count.

    The same loss as ``model(**batch).loss``, but the output layer runs only where it is
    needed: the prefix is most of the sequence. ``prefix_weight > 0`` adds that weight
    times the next-token loss over the sign prefix (the model also learns to continue the
    sign stream), which the examples themselves never label.
    """
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    head, labels = model.get_output_embeddings(), batch["labels"][:, 1:]
    keep = labels != -100
    text = torch.nn.functional.cross_entropy(head(hidden[:, :-1][keep]).float(), labels[keep])
    loss = text
    if prefix_weight > 0:
        prefix = (batch["attention_mask"][:, 1:] == 1) & ~keep
        targets = batch["input_ids"][:, 1:][prefix]
        loss = text + prefix_weight * torch.nn.functional.cross_entropy(head(hidden[:, :-1][prefix]).float(), targets)
    return loss, text, int(keep.sum())


@torch.no_grad()
def text_loss(model: Any, examples: list[dict], pad_id: int, batch_size: int = 32) -> float:
    """Mean cross-entropy per text token (labels != -100) over ``examples``."""
    model.eval()
    total, count = 0.0, 0
    for k in range(0, len(examples), batch_size):
        _, loss, n = batch_loss(model, pad_batch(examples[k:k + batch_size], pad_id))
        total += float(loss) * n
        count += n
    return total / max(count, 1)


def train_lm(model: Any, train: list[dict], val: list[dict], pad_id: int, s: LMSettings,
             curve: dict[str, list[float]]) -> None:
    """AdamW on random batches of ``train``; every ``eval_every`` steps log train and val text loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.98), weight_decay=0.01)
    rng, window = random.Random(s.seed), []
    for step in range(s.steps):
        model.train()
        for group in opt.param_groups:
            group["lr"] = _lr(step, s)
        batch = pad_batch(rng.sample(train, min(s.batch_size, len(train))), pad_id)
        loss, text, _ = batch_loss(model, batch, s.prefix_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        window.append(text.item())  # the curves compare text loss on train and held out
        if (step + 1) % s.eval_every == 0 or step + 1 == s.steps:
            curve["step"].append(step + 1)
            curve["train"].append(sum(window) / len(window))
            curve["val"].append(text_loss(model, val, pad_id))
            window = []
            log.info("step %d/%d: text loss train %.3f, held out %.3f", step + 1, s.steps,
                     curve["train"][-1], curve["val"][-1])


@torch.no_grad()
def greedy_decode(model: Any, tokenizer: Any, items: list[Item], max_new: int, batch_size: int = 32
                  ) -> list[list[str]]:
    """Greedy continuation after ``[bos] tokens <SEP>`` up to ``</s>``, as units."""
    model.eval()
    hyps = []
    for k in range(0, len(items), batch_size):
        examples = [build_example(tokenizer, i.tokens) for i in items[k:k + batch_size]]
        batch = pad_batch(examples, tokenizer.pad_token_id, left=True)
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            row = row[:row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
            hyps.append([t for t in tokenizer.convert_ids_to_tokens(row) if t != tokenizer.pad_token])
    return hyps


def run_condition(tokenizer: Any, train: list[Item], evals: dict[str, list[Item]], condition: str,
                  s: LMSettings, show: int = 3) -> ConditionResult:
    """Train the proxy LM on one condition and score greedy decoding on each eval set.

    The first eval set gives the validation loss curve.
    """
    start, result = time.perf_counter(), ConditionResult()
    train_c = control(train, condition, s.seed)
    evals_c = {name: control(items, condition, s.seed + 1) for name, items in evals.items() if items}

    def examples(items: list[Item]) -> list[dict]:
        return [build_example(tokenizer, i.tokens, " ".join(i.units)) for i in items]

    train_x = examples(train_c)
    val_x = examples(next(iter(evals_c.values()))) if evals_c else train_x[:32]
    max_len = max(len(e["input_ids"]) for e in train_x + [x for v in evals_c.values() for x in examples(v)])
    model = new_lm(tokenizer, s, max_len + 64)
    train_lm(model, train_x, val_x, tokenizer.pad_token_id, s, result.curve)
    max_new = max(len(i.units) for i in train) + 3
    for name, items in evals_c.items():
        hyps = greedy_decode(model, tokenizer, items, max_new)
        refs = [i.units for i in items]
        exact = sum(h == r for h, r in zip(hyps, refs)) / len(refs)
        result.scores[name] = {"error_rate": error_rate(hyps, refs), "exact": exact, "n": len(refs)}
        result.examples[name] = [(i.name, " ".join(i.units), " ".join(h)) for i, h in zip(items[:show], hyps)]
    result.seconds = time.perf_counter() - start
    return result


def margins(results: dict[str, ConditionResult]) -> dict[str, dict[str, float]]:
    """Per eval set: each control's error rate minus the real tokens' (positive = tokens better)."""
    real = results["tokens"].scores
    return {name: {c: results[c].scores[name]["error_rate"] - real[name]["error_rate"]
                   for c in results if c != "tokens" and name in results[c].scores}
            for name in real}


def plot_curves(results: dict[str, ConditionResult], out: str | Path, title: str) -> Path:
    """Train (dashed) and held-out (solid) text loss per condition, one PNG."""
    from src.viz._figure import new_figure, save_png

    fig = new_figure(6.4, 3.8, 100)
    ax = fig.add_subplot(1, 1, 1)
    for (name, r), colour in zip(results.items(), ("tab:blue", "tab:orange", "tab:grey")):
        ax.plot(r.curve["step"], r.curve["train"], "--", color=colour, label=f"{name} train")
        ax.plot(r.curve["step"], r.curve["val"], "-", color=colour, label=f"{name} held out")
    ax.set_xlabel("step")
    ax.set_ylabel("text cross-entropy (nats per token)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return save_png(fig, out)


def first_codes(entries: list[dict], n: int) -> list[dict]:
    """The entries with at most the first ``n`` codes of each stream (NC runs unchanged)."""
    return [{k: v if k == "t" or is_nc(v) else v[:n] for k, v in e.items()} for e in entries]


def items_from_records(records: list[dict], vocab: SignVocab, unit: str, where: str = "tokens",
                       max_codes: int | None = None) -> tuple[list[Item], list[str]]:
    """Items of the exported records that have a text (the others are returned as skip
    reasons); ``max_codes`` keeps only each stream's first codes (the coarse levels)."""
    from src.tokens.llm import prefix_tokens

    items, skipped = [], []
    for k, rec in enumerate(records):
        name = rec.get("video_name", f"{where}[{k}]")
        text = rec.get("text")
        if not isinstance(text, str) or not text_units(text, unit):
            skipped.append(f"{name}: no text")
            continue
        try:
            entries = rec["tokens"] if max_codes is None else first_codes(rec["tokens"], max_codes)
            tokens = prefix_tokens(entries, vocab, f"{name}.tokens")
        except (KeyError, ValueError) as e:
            skipped.append(f"{name}: {e}")
            continue
        items.append(Item(name, tokens, text_units(text, unit), rec.get("meta", {}).get("signer")))
    return items, skipped


def hold_out(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """A seeded random ``fraction`` of the items (at least 1) held out: (train, held out)."""
    order = random.Random(seed).sample(range(len(items)), len(items))
    n = max(1, round(fraction * len(items)))
    held = set(order[:n])
    return [i for k, i in enumerate(items) if k not in held], [i for k, i in enumerate(items) if k in held]
