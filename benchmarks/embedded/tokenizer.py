"""The embedded model's tokenizer: a closed word-level vocabulary (every name, relation and value is one
token), built with ``tokenizers`` and saved as a standard ``PreTrainedTokenizerFast`` so that
``AutoTokenizer.from_pretrained`` loads it like any other checkpoint's tokenizer."""
from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from neurorit.prompts import COMPACT, NO_EVIDENCE
from benchmarks.embedded.world import World

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def _template_words() -> list[str]:
    s = COMPACT
    texts = [s.doc, s.verify_ctx, s.verify_noctx, s.question, s.answer_marker, s.yes_word, s.no_word,
             NO_EVIDENCE["compact"], *s.heads.values(), *s.tails.values()]
    words: list[str] = []
    for t in texts:
        for w in t.replace("{", " {").replace("}", "} ").split():
            if not w.startswith("{") and w not in words:
                words.append(w)
    return words + [w for w in (".", "?", ":") if w not in words]


def build_tokenizer(world: World) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab: dict[str, int] = {}
    for w in SPECIALS + _template_words() + world.words():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)
