"""The LLM side of the tokens: fixed vocabulary, Hugging Face examples, the prefix-LM proxy."""
from __future__ import annotations

import json
import random
import re

import pytest

from src.data.keypoints import STREAM_NAMES
from src.pipelines import prefix_lm as pl
from src.tokens import SEP, rle_decode, rle_encode, template_to_entries
from src.tokens.llm import IGNORE, SignVocab, build_example, pad_batch, prefix_tokens, require_hf
from src.tokens.template import CHUNK, build_vocabulary, entries_to_template

K = 16
COUNTS = {"F": 1, "LH": 2, "RH": 2, "B": 2, "FB": 1}  # per-stream codes per chunk
VOCAB = SignVocab(K, COUNTS, max_run=4)


def random_entries(seed: int, chunks: int = 12) -> list[dict]:
    """RLE entries with per-stream code counts, some chunks shorter (adaptive depth), some runs."""
    rng = random.Random(seed)
    codes = {s: [] for s in STREAM_NAMES}
    for s in STREAM_NAMES:
        for t in range(chunks):
            if t and rng.random() < 0.5:
                codes[s].append(list(codes[s][-1]))
            else:
                codes[s].append([rng.randrange(K) for _ in range(rng.randint(1, COUNTS[s]))])
    return rle_encode(codes, max_run=VOCAB.max_run)


def hf_tokenizers():
    """Two real PreTrainedTokenizerFast built here: a lowercasing byte-level BPE, and a word-level
    one whose decode() joins tokens with spaces."""
    pytest.importorskip("transformers", reason="optional: pip install transformers tokenizers")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = ["hello thank you please", "where is the school today", "你好 world"] * 5
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=200, special_tokens=list(specials.values())))
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate([*specials.values(), "hello", "world"])},
                                       unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return [PreTrainedTokenizerFast(tokenizer_object=t, **specials) for t in (bpe, words)]


def test_parser_reads_whitespace_and_unnumbered_chunks() -> None:
    entries = random_entries(0)
    template = entries_to_template(entries, K)
    spaced = " " + re.sub(r">(?=<)", ">  \n", template) + "\t"
    assert template_to_entries(spaced, K) == entries
    unnumbered = "".join(prefix_tokens(entries, VOCAB))
    assert "<T1>" not in unnumbered and unnumbered.count(CHUNK) == len(entries)
    assert template_to_entries(" ".join(prefix_tokens(entries, VOCAB)), K) == entries
    with pytest.raises(ValueError, match="unknown token"):
        template_to_entries("<T> <F: c1>", K)  # whitespace inside a token stays an error


def test_vocabulary_is_fixed_by_the_quantiser() -> None:
    tokens = VOCAB.tokens()
    assert len(tokens) == len(set(tokens)) == K * sum(COUNTS.values()) + len(STREAM_NAMES) * 4 + 2
    assert tokens == build_vocabulary(COUNTS, K, 4) and tokens[-2:] == [CHUNK, SEP]
    assert not any(re.fullmatch(r"<T\d+>", t) for t in tokens)
    assert "<F:c15>" in tokens and "<F:c16>" not in tokens and "<LH:a31>" in tokens and "<LH:a32>" not in tokens
    produced = {t for seed in range(20) for t in prefix_tokens(random_entries(seed, 40), VOCAB)}
    assert produced <= set(tokens)
    with pytest.raises(ValueError, match=r"x\[0\]\.F: 2 codes, the sign vocabulary allows 1"):
        prefix_tokens([{"t": 0, "F": [1, 2], "LH": [1], "RH": [1], "B": [1], "FB": [1]}], VOCAB, "x")


def test_vocab_from_meta_takes_an_int_or_per_stream_counts() -> None:
    assert SignVocab.from_meta({"codebook_size": K, "num_levels": 3, "max_run": 4}).codes_per_stream == \
        dict.fromkeys(STREAM_NAMES, 3)
    assert SignVocab.from_meta({"codebook_size": K, "codes_per_stream": COUNTS, "num_levels": 2, "max_run": 4}) == VOCAB
    with pytest.raises(ValueError, match=r"r\.codes_per_stream: expected an int >= 1 or one per stream"):
        SignVocab.from_meta({"codebook_size": K, "codes_per_stream": {"F": 1}, "max_run": 4}, "r")
    with pytest.raises(ValueError, match=r"meta\.max_run: expected an int"):
        SignVocab.from_meta({"codebook_size": K, "num_levels": 3})
    from src.config import load_config

    cfg = load_config(None, [f"model.rvq.codebook_size={K}", "model.rvq.levels=2", "export.max_run=4"])
    assert SignVocab.from_config(cfg) == VOCAB  # the default per-stream levels 1/2/2/2/1


def test_missing_packages_name_the_install_line(monkeypatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install transformers tokenizers"):
        require_hf()


def test_examples_with_a_real_hf_tokenizer() -> None:
    from src.tokens.llm import add_sign_tokens

    for tokenizer in hf_tokenizers():
        base = len(tokenizer)
        assert add_sign_tokens(tokenizer, VOCAB) == len(VOCAB.tokens())
        assert len(tokenizer) == base + len(VOCAB.tokens())
        for seed in range(3):
            entries = random_entries(seed)
            tokens = prefix_tokens(entries, VOCAB)
            text = "hello world"
            ex = build_example(tokenizer, tokens, text)
            n_prefix = 1 + len(tokens) + 1  # bos, one id per sign token, <SEP>
            ids, labels = ex["input_ids"], ex["labels"]
            assert ids[0] == tokenizer.bos_token_id and ids[n_prefix - 1] == tokenizer.convert_tokens_to_ids(SEP)
            # one id per sign token, the same as tokenizing the prefix text
            assert ids[1:n_prefix - 1] == tokenizer("".join(tokens), add_special_tokens=False)["input_ids"]
            assert tokenizer.convert_ids_to_tokens(ids[1:n_prefix - 1]) == tokens
            assert labels[:n_prefix] == [IGNORE] * n_prefix
            assert labels[n_prefix:] == ids[n_prefix:] and IGNORE not in labels[n_prefix:]
            assert ids[-1] == tokenizer.eos_token_id and ex["attention_mask"] == [1] * len(ids)
            assert tokenizer.decode(ids[n_prefix:-1]).strip() == text
            # decode() may put spaces between added tokens; the parser reads it back either way
            decoded = tokenizer.decode(ids[1:n_prefix - 1])
            assert template_to_entries(decoded, K) == entries
            alone = build_example(tokenizer, tokens)
            assert alone["input_ids"] == ids[:n_prefix] and set(alone["labels"]) == {IGNORE}
    assert " " in decoded  # the word-level tokenizer spaced them out


def test_pad_batch_pads_on_the_asked_side() -> None:
    a = {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [IGNORE, 6, 7]}
    b = {"input_ids": [8], "attention_mask": [1], "labels": [IGNORE]}
    right, left = pad_batch([a, b], 0), pad_batch([a, b], 0, left=True)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]] and right["labels"][1].tolist() == [IGNORE] * 3
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]] and left["attention_mask"][1].tolist() == [0, 0, 1]


def test_error_rate_and_controls() -> None:
    assert pl.edit_distance("a b c".split(), "a c".split()) == 1
    assert pl.edit_distance([], "x y".split()) == 2
    assert pl.error_rate([["a", "x"], []], [["a", "b"], ["c"]]) == pytest.approx(2 / 3)
    assert pl.text_units("你 好吗", "char") == ["你", "好", "吗"] and pl.guess_unit(["你好", "好吗", "a b"]) == "char"
    items = [pl.Item(str(k), [f"<F:c{k}>", CHUNK, f"<LH:a{k}>"], [str(k)]) for k in range(6)]
    wrong = pl.control(items, "wrong video", 0)
    assert all(w.tokens != i.tokens and w.units == i.units for w, i in zip(wrong, items))
    assert sorted(tuple(w.tokens) for w in wrong) == sorted(tuple(i.tokens) for i in items)
    shuffled = pl.control(items, "shuffled", 0)
    assert all(sorted(s.tokens) == sorted(i.tokens) for s, i in zip(shuffled, items))


def test_first_codes_keeps_the_coarse_levels() -> None:
    entries = random_entries(1)
    coarse = pl.first_codes(entries, 1)
    assert rle_decode(coarse) == {s: [c[:1] for c in chunks] for s, chunks in rle_decode(entries).items()}
    assert len(prefix_tokens(coarse, VOCAB)) < len(prefix_tokens(entries, VOCAB))


def test_proxy_learns_an_easy_mapping_and_the_wrong_video_does_not() -> None:
    """Each video's first code names its word: a tiny LM reads it in a few steps; another
    video's tokens leave it at chance."""
    pytest.importorskip("transformers", reason="optional: pip install transformers tokenizers")
    import torch

    torch.set_num_threads(1)
    rng = random.Random(0)
    words = ["HELLO", "SCHOOL", "WATER", "HOME"]

    def item(k: int) -> pl.Item:
        w = rng.randrange(len(words))
        return pl.Item(f"v{k}", [CHUNK, f"<F:c{w}>", CHUNK, f"<LH:a{rng.randrange(K)}>"], [words[w]])

    train, held = [item(k) for k in range(64)], [item(k) for k in range(64, 96)]
    tokenizer = pl.make_tokenizer(VOCAB, train)
    s = pl.LMSettings(layers=1, width=32, heads=2, steps=60, batch_size=16, lr=1e-2, eval_every=20,
                      prefix_weight=0.0)
    real = pl.run_condition(tokenizer, train, {"held": held}, "tokens", s)
    wrong = pl.run_condition(tokenizer, train, {"held": held}, "wrong video", s)
    assert real.curve["step"] == [20, 40, 60] and len(real.curve["val"]) == 3
    assert real.curve["val"][-1] < real.curve["val"][0]
    assert real.scores["held"]["error_rate"] <= 0.1 < 0.4 <= wrong.scores["held"]["error_rate"]
    margins = pl.margins({"tokens": real, "wrong video": wrong})
    assert margins["held"]["wrong video"] >= 0.3
    # the loss that skips the output layer on the prefix is the model's own loss
    batch = pad_batch([build_example(tokenizer, i.tokens, i.units[0]) for i in held[:4]], tokenizer.pad_token_id)
    model = pl.new_lm(tokenizer, s, 64)
    with torch.no_grad():
        objective, text, n = pl.batch_loss(model, batch, 0.5)
        assert float(text) == pytest.approx(float(model(**batch).loss), rel=1e-5) and n == 4 * 2  # word, eos
        assert float(objective) > float(text) == float(pl.batch_loss(model, batch)[0])


def _proxy_run(tmp_path, capsys, lines: list[dict], *extra: str) -> tuple[int, str, dict]:
    from src.commands.verify import prefix_lm as cmd

    path = tmp_path / "tokens.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines))
    out = tmp_path / "proxy"
    rc = cmd.main(["--tokens", str(path), "--width", "32", "--heads", "2", "--layers", "1", "--batch-size", "16",
                   "--lr", "1e-2", "--prefix-weight", "0", "--val-frac", "0.25", "--out", str(out), *extra])
    return rc, capsys.readouterr().out, json.loads((out / "prefix_lm.json").read_text())


def test_verify_prefix_lm_fails_on_tokens_that_carry_nothing(tmp_path, capsys) -> None:
    """Texts unrelated to the tokens: at the default margin the verdict is FAIL and the exit 1."""
    pytest.importorskip("transformers", reason="optional: pip install transformers tokenizers")
    from src.commands.verify import prefix_lm as cmd

    meta = {"codebook_size": K, "codes_per_stream": COUNTS, "max_run": 4}
    lines = [{"video_name": f"v{k}", "tokens": random_entries(k, 4), "text": f"w{k % 3} w{k % 2}", "meta": meta}
             for k in range(12)] + [{"video_name": "silent", "tokens": random_entries(99, 4), "meta": meta}]
    rc, printed, figures = _proxy_run(tmp_path, capsys, lines, "--steps", "4")
    assert rc == 1 and "FAIL" in printed and "1 records skipped (first: silent: no text)" in printed
    assert figures["pass"] is False and figures["min_margin"] == 0.1
    assert figures["pass"] == (min(figures["margins"]["held-out videos"].values()) >= figures["min_margin"])
    assert figures["metric"] == "WER" and set(figures["results"]) == set(pl.CONDITIONS)
    assert figures["results"]["tokens"]["scores"]["held-out videos"]["n"] == 3
    assert (tmp_path / "proxy" / "prefix_lm_loss.png").stat().st_size > 1000
    assert cmd.main(["--tokens", str(tmp_path / "missing.jsonl")]) == 2


def test_verify_prefix_lm_passes_where_the_tokens_carry_the_text(tmp_path, capsys) -> None:
    """A video's word is named by the face code of its first chunk; its second chunk's face
    code is another word's (the other streams hold codes that say nothing). The tokens beat both
    controls (shuffled order, another video) by the default margin: PASS, exit 0."""
    pytest.importorskip("transformers", reason="optional: pip install transformers tokenizers")
    words = ["HELLO", "SCHOOL", "WATER", "HOME"]
    meta = {"codebook_size": K, "codes_per_stream": COUNTS, "max_run": 4}
    rng, lines = random.Random(1), []
    for k in range(96):
        a, b = rng.sample(range(len(words)), 2)
        codes = {name: [[a], [b]] if name == "F" else [[k % K] * COUNTS[name]] * 2 for name in STREAM_NAMES}
        lines.append({"video_name": f"v{k}", "tokens": rle_encode(codes, max_run=VOCAB.max_run),
                      "text": words[a], "meta": meta})
    rc, printed, figures = _proxy_run(tmp_path, capsys, lines, "--steps", "150", "--unit", "word")
    margins = figures["margins"]["held-out videos"]
    assert rc == 0 and "PASS" in printed, printed
    assert figures["pass"] is True and min(margins.values()) >= 0.1
    wer = {c: r["scores"]["held-out videos"]["error_rate"] for c, r in figures["results"].items()}
    assert wer["tokens"] + 0.1 <= min(wer["shuffled"], wer["wrong video"]), wer


