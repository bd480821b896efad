"""Everything teacher-side: loading (with the adapter check), its tokenizer, the cache's
format and reader, the head-only teacher, and the pre-flight fit report."""
