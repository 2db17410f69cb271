"""The embedded synthetic world and its benchmark (docs/DESIGN.md §6): made-up entities with world facts
(memorised by the embedded model) and fresh facts (readable only from the documents), the closed word-level
tokenizer, the pre-training mix of the embedded model and a small BM25 retriever."""
