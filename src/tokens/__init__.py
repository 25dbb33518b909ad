"""Sign tokens: run-length NC codec, LLM templates and vocabulary, JSONL records."""
from src.tokens.records import make_record, read_jsonl, validate_record, write_jsonl_atomic
from src.tokens.rle import count_codes, count_tokens, rle_decode, rle_encode
from src.tokens.template import (
    SEP,
    build_vocabulary,
    entries_to_template,
    llm_example,
    template_to_entries,
)

__all__ = [
    "SEP",
    "build_vocabulary",
    "count_codes",
    "count_tokens",
    "entries_to_template",
    "llm_example",
    "make_record",
    "read_jsonl",
    "rle_decode",
    "rle_encode",
    "template_to_entries",
    "validate_record",
    "write_jsonl_atomic",
]
