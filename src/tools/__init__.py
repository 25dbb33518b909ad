"""Tools around the data, not part of the tokenizer: the root checker (data-check) and the
synthetic signer (data-synth, the demo's and the tests' data)."""
