"""Batches for the step: the row collator (padding, packing, cached teacher rows) and the
cross-tokenizer collator on top of it; how packed rows stay apart."""
