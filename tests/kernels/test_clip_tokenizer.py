"""The fast CLIP tokenizer gives open_clip's ids exactly: real CC3M captions and adversarial text."""
import open_clip
import open_clip.tokenizer as oct
import pytest
import torch

from winnow.kernels import clip_tokenizer
from winnow.kernels.clip_tokenizer import FastSimpleTokenizer, fast_tokenizer

ADVERSARIAL = [
    "", "   ", "A Dog", "a dog's ball &amp; the cat&#39;s toy", "AT&T", "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m",
    "caf\u00c3\u00a9 mojibake \u00e2\u20ac\u0153quoted\u00e2\u20ac\u009d", "tab\tand\nnew\r\nlines", "nbsp\u00a0here",
    "\u201ccurly\u201d \u2018quotes\u2019 \ufb01 ligature", "\uff26\uff55\uff4c\uff4c width", "\x1b[31mred\x1b[0m",
    "nul\x00 and bell\x07", "\u4e00\u53ea\u732b\u5728\u8349\u5730\u4e0a \u0e41\u0e21\u0e27",
    "emoji \U0001f431\U0001f3fd\u200d",
    "I'M HERE, you'll see; we'd've", "<start_of_text> literal <END_OF_TEXT>", "<b>bold</b> &lt;tag&gt;",
    "aaaaaaaaaaaaaaaaaaaaaaaa", "!!!???...,,,", "numbers 1234567 3.14 1e-9", "x" * 300,
    " ".join(["word"] * 100), "hyphen-ated under_score slash/ed", "\ud800 lone surrogate",
]


@pytest.fixture(scope="module")
def reference():
    return open_clip.get_tokenizer("ViT-B-32")


def test_wraps_only_tokenizers_it_reproduces(reference):
    assert isinstance(fast_tokenizer(reference), FastSimpleTokenizer)
    for other in (oct.SimpleTokenizer(clean="whitespace"), oct.SimpleTokenizer(clean="canonicalize"),
                  oct.SimpleTokenizer(reduction_mask="simple")):
        assert fast_tokenizer(other) is other


@pytest.mark.parametrize("context", [77, 32, 5])
def test_adversarial_text_gives_open_clips_ids(reference, context):
    fast = fast_tokenizer(reference)
    got = fast(ADVERSARIAL, context_length=context)
    want = oct.SimpleTokenizer()(ADVERSARIAL, context_length=context)
    assert got.dtype == torch.long and got.shape == (len(ADVERSARIAL), context)
    for text, g, w in zip(ADVERSARIAL, got, want):
        assert torch.equal(g, w), repr(text)


def test_all_cc3m_captions_give_open_clips_ids(shared_data, reference):
    lines = (shared_data / "captions" / "cc3m_val.tsv").read_text(encoding="utf-8").splitlines()
    captions = [line.split("\t")[0] for line in lines]
    fast = fast_tokenizer(reference)
    want = oct.SimpleTokenizer()(captions)
    assert torch.equal(fast(captions), want)
    assert torch.equal(fast(captions), want)  # again, from the word cache


def test_word_cache_stays_bounded_and_exact(reference, monkeypatch):
    monkeypatch.setattr(clip_tokenizer, "MAX_CACHED_WORDS", 8)
    fast = fast_tokenizer(reference)
    texts = [f"photo number {i} of a red fox{i} in snow" for i in range(50)]
    assert torch.equal(fast(texts), oct.SimpleTokenizer()(texts))
    assert len(fast._words) <= 8


def test_models_load_with_the_fast_tokenizer_and_engine_shares_it(tmp_path):
    from tests.tiny_clip import tiny_checkpoint
    from winnow.stages.models.clip import load_model

    a = load_model(tiny_checkpoint(tmp_path / "a.pt"))
    b = load_model(tiny_checkpoint(tmp_path / "b.pt", seed=1))
    assert isinstance(a.tokenizer, FastSimpleTokenizer)
    assert a.tokenizer.share_key == b.tokenizer.share_key
    assert type(a.open_clip_tokenizer) is oct.SimpleTokenizer  # what reference loops use
    texts = ["a red fox in the snow", "two dogs &amp; a ball"]
    ref = oct.SimpleTokenizer(context_length=a.tokenizer.context_length)(texts)
    assert torch.equal(a.tokenize(texts), ref)
