"""Pure token alignment: byte tables, the compiled alignment kernel, the vocabulary bridge."""
