"""MetaCLIP matching must give exactly the reference implementation's entry ids (shared reference outputs)."""
import json
import random

import numpy as np
import pytest

from winnow.kernels import substring_match as sm

WORDNET, PROXY = "metadata_wordnet_86654.json", "metadata_proxy_338k.json"


@pytest.fixture(scope="module")
def metaclip_dir(shared_data):
    return shared_data / "metaclip"


@pytest.fixture(scope="module")
def metadata(metaclip_dir):
    return {name: json.loads((metaclip_dir / name).read_text(encoding="utf-8")) for name in (WORDNET, PROXY)}


@pytest.fixture(scope="module")
def matchers(metadata):
    """Each matcher once per module: the 338k-entry ones take a second or two to build. ("v1-automaton" is the
    pyahocorasick path for v1: the default v1 path is the token trie, and both must equal the reference.)"""
    out = {(name, v): sm.build_matcher(entries, v) for name, entries in metadata.items() for v in ("v1", "v2")}
    out.update({(name, "v1-automaton"): sm.build_matcher(entries, "v1", method="automaton")
                for name, entries in metadata.items()})
    return out


@pytest.fixture(scope="module")
def cc3m_reference(metaclip_dir):
    with open(metaclip_dir / "reference_matches_cc3m_val.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def edge_cases(metaclip_dir):
    with open(metaclip_dir / "reference_edge_cases.jsonl", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    return lines[0]["metadata"], lines[1:]


def _rows(offsets, ids):
    return [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


@pytest.mark.parametrize("version,method", [("v1", "auto"), ("v1", "automaton"), ("v2", "auto")])
def test_every_reference_edge_case(edge_cases, version, method):
    entries, cases = edge_cases
    assert len(cases) == 42
    offsets, ids = sm.match_texts([c["text"] for c in cases], sm.build_matcher(entries, version, method))
    got = [[entries[i] for i in row] for row in _rows(offsets, ids)]
    want = [sorted(c[version], key=entries.index) for c in cases]
    assert got == want
    if version == "v1":
        assert [sm.prepare_text(c["text"]) for c in cases] == [c["v1_spaced_text"] for c in cases]
    # the slow reference method agrees too (it is what the benchmark compares against)
    assert [[entries[i] for i in sm.match_naive(c["text"], entries, version)] for c in cases] == want


def test_v1_and_v2_really_differ_on_the_edge_cases(edge_cases):
    entries, cases = edge_cases
    differ = {c["text"] for c in cases if c["v1"] != c["v2"]}
    assert differ == {"\xa0dog", "neighbor'hood", "我的猫很可爱"}  # strip, punctuation side, CJK


@pytest.mark.parametrize("name", [PROXY, WORDNET])
@pytest.mark.parametrize("method", ["v1", "v1-automaton", "v2"])
def test_every_cc3m_caption_matches_the_reference(metadata, matchers, cc3m_reference, name, method):
    version = method[:2]
    texts = [r["text"] for r in cc3m_reference]
    assert len(texts) == 15833
    n = len(metadata[name])
    key = f"{version}_{'proxy' if name == PROXY else 'wordnet'}"
    if key == "v2_wordnet":
        # The reference file has no v2 wordnet column: the wordnet list is the proxy list's first 86,654 entries
        # (same ids) and entries match independently, so its reference ids are the proxy ones below 86,654.
        assert metadata[PROXY][:n] == metadata[WORDNET]
        want = [sorted(i for i in r["v2_proxy"] if i < n) for r in cc3m_reference]
    else:
        want = [sorted(r[key]) for r in cc3m_reference]
    got = _rows(*sm.match_texts(texts, matchers[(name, method)]))
    bad = [(texts[i], got[i], want[i]) for i in range(len(texts)) if got[i] != want[i]]
    assert not bad, f"{len(bad)} captions differ, first: {bad[0]}"
    assert sum(map(len, got)) > len(texts)  # not vacuous: several entries per caption


def test_naive_loop_agrees_with_reference_on_a_sample(metadata, cc3m_reference):
    entries = metadata[WORDNET]
    for r in random.Random(0).sample(cc3m_reference, 20):
        assert sm.match_naive(r["text"], entries) == sorted(r["v1_wordnet"])


def test_duplicate_entries_all_match_like_the_reference_loop():
    entries = ["dog", "cat", "dog", "hot dog", "dog"]
    offsets, ids = sm.match_texts(["a hot dog", "cat", "none"], sm.build_matcher(entries))
    assert _rows(offsets, ids) == [[0, 2, 3, 4], [1], []]
    assert sm.match_naive("a hot dog", entries) == [0, 2, 3, 4]


def test_matches_never_span_two_captions_and_overlaps_count_once():
    entries = ["dog cat", "dog", "", "猫狗"]
    for version in ("v1", "v2"):
        m = sm.build_matcher(entries, version)
        rows = _rows(*sm.match_texts(["dog", "cat", "dog dog dog", "x.", "猫", "狗"], m))
        # "" is " " + "" + " " = two spaces: only the caption whose spacing makes a double space ("x .  ")
        assert rows == [[1], [], [1], [2], [], []]


def test_captions_containing_the_separator_fall_back_correctly():
    entries = ["dog", "cat"]
    m = sm.build_matcher(entries, method="automaton")
    texts = [f"dog{m.separator}cat", "cat", f"x {m.separator} dog"]
    assert _rows(*sm.match_texts(texts, m)) == [sm.match_naive(t, entries) for t in texts]


def test_separator_avoids_characters_used_by_entries():
    m = sm.build_matcher(["a\x00b", "c"], method="automaton")
    assert m.separator != "\x00"
    assert _rows(*sm.match_texts(["a\x00b", "c"], m)) == [[0], [1]]


def test_none_empty_and_chunked_inputs(monkeypatch, metadata, cc3m_reference):
    entries = metadata[WORDNET][:5000]
    texts = [r["text"] for r in cc3m_reference[:200]] + [None, "", "   "]
    want = [sm.match_naive(t, entries) for t in texts]
    m = sm.build_matcher(entries)
    monkeypatch.setattr(sm, "CHUNK_TEXTS", 7)  # many chunks: offsets must stitch together
    offsets, ids = sm.match_texts(texts, m)
    assert _rows(offsets, ids) == want
    assert ids.dtype == np.int32 and offsets[-1] == len(ids)
    assert _rows(*sm.match_texts([], m)) == []
    assert _rows(*sm.match_texts(["dog"], sm.build_matcher([]))) == [[]]


def test_non_string_entry_is_refused():
    with pytest.raises(TypeError, match="entry 1"):
        sm.build_matcher(["dog", 3])


def test_v1_token_trie_equals_the_naive_loop_on_adversarial_text():
    """Random captions and entries over an alphabet full of what spacing touches (punctuation, tabs, runs of
    spaces, non-breaking space, CJK): the token path must agree with the reference method caption by caption."""
    rng = random.Random(7)
    alphabet = ["a", "b", "ab", " ", "  ", ",", ".", "?", "`", "\t", "\n", "\xa0", "猫", "St.", "e.g", ""]

    def text(k):
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, k)))

    entries = sorted({text(4) for _ in range(300)} | {"a", "a b", "a  b", " a", "b ", "", "a,b", "猫"})
    texts = [text(12) for _ in range(2000)] + [None, "", " ", "\t"]
    trie, automaton = sm.build_matcher(entries), sm.build_matcher(entries, method="automaton")
    assert trie.trie is not None and automaton.automaton is not None
    want = [sm.match_naive(t, entries) for t in texts]
    assert _rows(*sm.match_texts(texts, trie)) == want
    assert _rows(*sm.match_texts(texts, automaton)) == want
    assert sum(map(len, want)) > len(texts)  # not vacuous


def test_arrow_input_with_offset_slices_and_nulls():
    import pyarrow as pa

    entries = ["dog", "hot dog", "cat"]
    m = sm.build_matcher(entries)
    arr = pa.array(["x", "a hot dog", None, "cat, dog", "dogs"]).slice(1)  # non-zero offset
    assert _rows(*sm.match_texts(arr, m)) == [[0, 1], [], [0, 2], []]
    assert _rows(*sm.match_texts(pa.chunked_array([arr[:2], arr[2:]]), m)) == [[0, 1], [], [0, 2], []]
