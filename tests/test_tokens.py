"""Invariants of the token package: RLE and template round trips, vocabulary, records."""
from __future__ import annotations

import copy
import json
import random
import re

import pytest

from src.data.keypoints import STREAM_NAMES
from src.tokens import (
    SEP,
    build_vocabulary,
    count_codes,
    count_tokens,
    entries_to_template,
    llm_example,
    make_record,
    read_jsonl,
    rle_decode,
    rle_encode,
    template_to_entries,
    validate_record,
    write_jsonl_atomic,
)

K = 1024
LEVELS = 3
SPLIT = re.compile(r"<[^<>]*>")


def random_codes(rng: random.Random, n_chunks: int, p_repeat: float, k: int = K) -> dict:
    """Codes with adaptive depth (1..LEVELS levels) and runs of repeated chunks."""
    codes = {}
    for s in STREAM_NAMES:
        chunks: list[list[int]] = []
        for t in range(n_chunks):
            if t and rng.random() < p_repeat:
                chunks.append(list(chunks[-1]))
            else:
                chunks.append([rng.randrange(k) for _ in range(rng.randint(1, LEVELS))])
        codes[s] = chunks
    return codes


def random_cases(n: int = 200):
    rng = random.Random(0)
    for _ in range(n):
        n_chunks = rng.choice([1, 2, rng.randint(3, 20), rng.randint(40, 120)])
        k = rng.choice([2, 5, K])  # tiny codebooks make accidental repeats
        codes = random_codes(rng, n_chunks, rng.choice([0.0, 0.5, 0.9, 0.99]), k)
        yield codes, rng.choice([None, 1, 2, 7]), k


def covered(entries: list[dict], stream: str) -> list[bool]:
    """Per chunk: is the stream NC (start of a run or omitted inside one)?"""
    return [stream not in e or isinstance(e[stream][0], str) for e in entries]


def test_rle_round_trip_random() -> None:
    for codes, max_run, _ in random_cases():
        entries = rle_encode(codes, max_run=max_run)
        assert rle_decode(entries) == codes
        assert [e["t"] for e in entries] == list(range(len(codes["F"])))
        assert all(isinstance(entries[0][s][0], int) for s in STREAM_NAMES)
        runs = [e[s][1] for e in entries for s in STREAM_NAMES if s in e and e[s][0] == "NC"]
        assert max_run is None or all(1 <= k <= max_run for k in runs)
        assert json.loads(json.dumps(entries)) == entries


def test_rle_lossless_nc_iff_same_as_previous() -> None:
    for codes, max_run, _ in random_cases(50):
        entries = rle_encode(codes, max_run=max_run)
        for s, chunks in codes.items():
            same = [False] + [chunks[t] == chunks[t - 1] for t in range(1, len(chunks))]
            assert covered(entries, s) == same


def test_long_run_split_by_max_run() -> None:
    codes = {s: [[1, 2]] * 10 for s in STREAM_NAMES}
    entries = rle_encode(codes, max_run=4)
    assert [entries[t].get("LH") for t in range(10)] == [
        [1, 2], ["NC", 4], None, None, None, ["NC", 4], None, None, None, ["NC", 1]
    ]
    assert rle_decode(entries) == codes
    assert rle_encode(codes)[1]["LH"] == ["NC", 9]


def test_all_static_compresses() -> None:
    codes = {s: [[3, 4, 5]] * 50 for s in STREAM_NAMES}
    entries = rle_encode(codes)
    assert count_codes(codes) == 5 * 50 * 3
    assert count_tokens(entries) == 5 * 3 + 5  # chunk 0 codes + one NC marker per stream
    assert count_tokens(entries) < 0.7 * count_codes(codes)
    assert rle_decode(entries) == codes


def test_all_changing_has_no_nc() -> None:
    codes = {s: [[t, t + 1][: 1 + t % 2] for t in range(30)] for s in STREAM_NAMES}
    entries = rle_encode(codes, max_run=3)
    assert all(isinstance(e[s][0], int) for e in entries for s in STREAM_NAMES)
    assert count_tokens(entries) == count_codes(codes)


def test_thresholded_mode_uses_anchor() -> None:
    codes = {"LH": [[10], [11], [12], [12], [10]], "RH": [[1], [1], [2], [3], [4]]}
    unchanged = {"LH": [True, True, True, False, False], "RH": [False] * 5}
    entries = rle_encode(codes, unchanged=unchanged)
    # t=3 equals t=2 but not the anchor (t=0), so it must be explicit.
    assert [e.get("LH") for e in entries] == [[10], ["NC", 2], None, [12], [10]]
    # Equal codes are NC even where unchanged is false: lossless, so free.
    assert [e.get("RH") for e in entries] == [[1], ["NC", 1], [2], [3], [4]]
    assert rle_decode(entries) == {"LH": [[10], [10], [10], [12], [10]], "RH": codes["RH"]}


def test_single_chunk_sequence() -> None:
    codes = {s: [[7, 8]] for s in STREAM_NAMES}
    entries = rle_encode(codes, max_run=4)
    assert entries == [{"t": 0, **codes_first(codes)}]
    text = entries_to_template(entries, K, max_chunks=1)
    assert template_to_entries(text, K) == entries
    assert rle_decode(entries) == codes
    validate_record(make_record("v", 25, 10, entries, text, True, {}), LEVELS, K)


def codes_first(codes: dict) -> dict:
    return {s: chunks[0] for s, chunks in codes.items()}


@pytest.mark.parametrize(
    "entries, message",
    [
        ([], r"non-empty list"),
        ([{"t": 0, "F": ["NC", 1]}], r"entries\[0\]\.F: NC before any explicit code"),
        ([{"t": 0, "F": [1]}, {"F": [2]}], r"entries\[1\]: missing t"),
        ([{"t": 0, "F": [1]}, {"t": 2, "F": [2]}], r"entries\[1\]\.t: expected 1"),
        ([{"t": 0, "F": [1]}, {"t": 1, "F": ["NC", 2]}], r"entries\[1\]\.F: .*past the end"),
        (
            [{"t": 0, "F": [1]}, {"t": 1, "F": ["NC", 2]}, {"t": 2, "F": [1]}],
            r"entries\[2\]\.F: overlaps",
        ),
        ([{"t": 0, "F": [1]}, {"t": 1, "F": ["NC", 0]}], r"entries\[1\]\.F: NC run length must be"),
        ([{"t": 0, "F": [1]}, {"t": 1, "F": ["nc", 1]}], r"entries\[1\]\.F: malformed NC"),
        ([{"t": 0, "F": [1]}, {"t": 1}], r"entries\[1\]\.F: missing and not covered"),
        ([{"t": 0, "F": [1]}, {"t": 1, "F": [1], "LH": [2]}], r"entries\[1\]\.LH: stream absent"),
        ([{"t": 0, "X": [1]}], r"unknown key 'X'"),
        ([{"t": 0, "F": []}], r"entries\[0\]\.F: expected a non-empty list"),
    ],
)
def test_rle_decode_rejects_malformed(entries: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rle_decode(entries)


@pytest.mark.parametrize(
    "codes, kwargs, message",
    [
        ({}, {}, r"non-empty dict"),
        ({"F": [[1]], "LH": [[1], [2]]}, {}, r"same number"),
        ({"F": []}, {}, r"same number"),
        ({"X": [[1]]}, {}, r"unknown stream 'X'"),
        ({"F": [[1]]}, {"max_run": 0}, r"max_run"),
        ({"F": [[-1]]}, {}, r"codes\.F\[0\]: code -1 out of range"),
        ({"F": [[1], [1]]}, {"unchanged": {"F": [False]}}, r"unchanged\.F"),
        ({"F": [[1]]}, {"unchanged": {"LH": [False]}}, r"unchanged has streams"),
    ],
)
def test_rle_encode_rejects_malformed(codes: dict, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rle_encode(codes, **kwargs)


def test_template_example() -> None:
    entries = [
        {"t": 0, "F": [12, 7], "LH": [37], "RH": [8, 8], "B": [91], "FB": [45]},
        {"t": 1, "F": [7], "LH": ["NC", 2], "RH": [8], "B": [91], "FB": [44]},
        {"t": 2, "F": [7], "RH": [8], "B": [91], "FB": [44]},
    ]
    text = entries_to_template(entries, K)
    assert text == (
        "<T0><F:c12><F:c1031><LH:a37><RH:b8><RH:b1032><B:d91><FB:e45>"
        "<T1><F:c7><LH:NCx2><RH:b8><B:d91><FB:e44>"
        "<T2><F:c7><RH:b8><B:d91><FB:e44>"
    )
    assert template_to_entries(text, K) == entries


def test_template_round_trip_random() -> None:
    for codes, max_run, k in random_cases(100):
        for entries in (rle_encode(codes, max_run=max_run), plain_entries(codes)):
            text = entries_to_template(entries, k)
            assert template_to_entries(text, k) == entries


def plain_entries(codes: dict) -> list[dict]:
    """Entries without RLE: every stream explicit in every chunk."""
    n = len(next(iter(codes.values())))
    return [{"t": t, **{s: codes[s][t] for s in codes}} for t in range(n)]


def test_level_ids_unambiguous() -> None:
    k = 8
    seen = {}
    for level in range(LEVELS):
        for code in range(k):
            tok = entries_to_template([{"t": 0, "LH": [0] * level + [code]}], k)
            seen[SPLIT.findall(tok)[-1]] = (level, code)
    assert len(seen) == LEVELS * k  # no two (level, code) pairs share a token
    with pytest.raises(ValueError, match=r"'<LH:a8>' at position 4: level 1, expected level 0"):
        template_to_entries("<T0><LH:a8>", k)
    with pytest.raises(ValueError, match=r"'<LH:a17>' at position 11: level 2, expected level 1"):
        template_to_entries("<T0><LH:a1><LH:a17>", k)


@pytest.mark.parametrize(
    "text, message",
    [
        ("<T0><X:a1>", r"unknown token '<X:a1>' at position 4"),
        ("<T0><LH:b1>", r"unknown token '<LH:b1>' at position 4"),
        ("<T0><F:c1>junk", r"unknown token 'junk' at position 10"),
        ("<T01>", r"unknown token '<T01>' at position 0"),
        ("<T0><F:NCx0>", r"unknown token '<F:NCx0>'"),
        ("<F:c1>", r"'<F:c1>' at position 0: comes before any time token"),
        ("<T0><LH:a1><F:c1>", r"'<F:c1>' at position 11: streams must follow"),
        ("<T0><F:c1><LH:a1><F:c1025>", r"'<F:c1025>' .*already complete"),
        ("<T0><F:NCx1><F:c0>", r"'<F:c0>' .*already complete"),
    ],
)
def test_template_rejects_unknown_tokens(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        template_to_entries(text, K)


def test_template_rejects_bad_entries() -> None:
    with pytest.raises(ValueError, match=r"entries\[0\]\.t: 5 has no time token \(max_chunks=5\)"):
        entries_to_template([{"t": 5, "F": [1]}], K, max_chunks=5)
    with pytest.raises(ValueError, match=r"entries\[0\]\.F: code 1024 out of range"):
        entries_to_template([{"t": 0, "F": [1024]}], K)


def test_vocabulary_covers_every_template_token() -> None:
    num_levels, k, max_run, max_chunks = LEVELS, 5, 4, 120
    vocab = build_vocabulary(num_levels, k, max_run, max_chunks)
    assert len(vocab) == len(set(vocab))
    assert len(vocab) == 5 * num_levels * k + 5 * max_run + max_chunks + 1
    assert json.loads(json.dumps(vocab)) == vocab
    assert vocab == build_vocabulary(num_levels, k, max_run, max_chunks)  # stable order
    vocab_set, produced = set(vocab), set()
    for codes, _, _ in random_cases(100):
        codes = {s: [[c % k for c in chunk] for chunk in chunks] for s, chunks in codes.items()}
        text = entries_to_template(rle_encode(codes, max_run=max_run), k, max_chunks)
        tokens = SPLIT.findall(text)
        assert "".join(tokens) == text
        produced.update(tokens)
    assert produced <= vocab_set
    assert {"<F:c14>", "<FB:e14>", "<LH:NCx4>", "<T119>", SEP} <= vocab_set
    assert "<F:c15>" not in vocab_set and "<LH:NCx5>" not in vocab_set


def test_llm_example_marks_text_span() -> None:
    prefix = "<T0><F:c1><LH:a2>"
    ex = llm_example(prefix, "你好 world")
    start, end = ex["loss_mask"]["text_span"]
    assert ex["input"] == prefix + SEP + "你好 world"
    assert ex["input"][start:end] == "你好 world"
    assert ex["input"][:start] == prefix + SEP
    with pytest.raises(ValueError, match="text contains <SEP>"):
        llm_example(prefix, "a<SEP>b")


def sample_record() -> dict:
    codes = random_codes(random.Random(3), 12, 0.7, K)
    entries = rle_encode(codes, max_run=4)
    text = entries_to_template(entries, K)
    meta = {"levels": LEVELS}
    return make_record("S000001_P0000_T00", 25.0, 10, entries, text, True, meta, "你好")


def test_record_validates() -> None:
    rec = sample_record()
    validate_record(rec, LEVELS, K)
    assert rec["text"] == "你好" and rec["tokens"][0]["t"] == 0
    assert "text" not in make_record("v", 25, 10, rec["tokens"], rec["template"], True, {})


def first_nc(rec: dict) -> tuple[int, str]:
    """(t, stream) of the record's first NC marker."""
    nc = ((t, s) for t, e in enumerate(rec["tokens"]) for s in e if s != "t" and e[s][0] == "NC")
    return next(nc)


def set_nc_length(rec: dict, t: int, s: str) -> None:
    rec["tokens"][t][s][1] = 0


def drop_last_chunk_from_template(rec: dict, t: int, s: str) -> None:
    rec["template"] = entries_to_template(rec["tokens"][:-1], K)


# (mutation of a valid record, expected message; {t}/{s} = its first NC marker)
BROKEN = [
    (set_nc_length, r"tokens\[{t}\]\.{s}: NC run length must be >= 1"),
    (lambda r, t, s: r.update(rle=False), r"tokens\[{t}\]\.{s}: NC marker in a record with rle="),
    (lambda r, t, s: r["tokens"][0].update(F=[1024]), r"tokens\[0\]\.F: code 1024 out of range"),
    (lambda r, t, s: r["tokens"][0].update(F=[1, 2, 3, 4]), r"tokens\[0\]\.F: 4 levels, at most 3"),
    (lambda r, t, s: r["tokens"][2].update(t=5), r"tokens\[2\]\.t: expected 2, got 5"),
    (lambda r, t, s: r["tokens"].clear(), r"tokens: expected a non-empty list"),
    (lambda r, t, s: r.update(fps="25"), r"fps: expected a number > 0"),
    (lambda r, t, s: r.pop("video_name"), r"video_name: missing"),
    (lambda r, t, s: r.update(extra=1), r"extra: unknown field"),
    (lambda r, t, s: r.update(template=r["template"][:-1]), r"template: unknown token"),
    (drop_last_chunk_from_template, r"template: does not parse back to tokens .*tokens\[11\]"),
]


@pytest.mark.parametrize("mutate, message", BROKEN)
def test_broken_record_names_field(mutate, message: str) -> None:
    rec = copy.deepcopy(sample_record())
    t, s = first_nc(rec)
    mutate(rec, t, s)
    with pytest.raises(ValueError, match=message.format(t=t, s=s)):
        validate_record(rec, LEVELS, K)


def test_jsonl_round_trip_and_atomicity(tmp_path) -> None:
    path = tmp_path / "exports" / "split" / "tokens.jsonl"
    other = make_record("v2", 30, 10, [{"t": 0, "B": [1]}], "<T0><B:d1>", True, {})
    records = [sample_record(), other]
    assert write_jsonl_atomic(path, records) == 2
    assert read_jsonl(path) == records
    for rec in read_jsonl(path):
        validate_record(rec, LEVELS, K)
    assert [p.name for p in path.parent.iterdir()] == ["tokens.jsonl"]

    def failing():
        yield records[0]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_jsonl_atomic(path, failing())
    assert read_jsonl(path) == records  # old file intact
    assert [p.name for p in path.parent.iterdir()] == ["tokens.jsonl"]


def test_read_jsonl_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: bad JSON"):
        read_jsonl(path)
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: expected a JSON object"):
        read_jsonl(path)
