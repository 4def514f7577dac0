import io

import pyarrow as pa
import pytest
from PIL import Image

from winnow.pipeline.plan import Step
from winnow.stages.errors import WinnowError
from winnow.stages.filter.basic import BasicFilter


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 30, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _run(table: pa.Table, **params) -> pa.Table:
    out, _ = Step(BasicFilter(**params), "map").run(table)
    return out


EN = "a photo of a red circle on a white background"


def test_caption_rules_and_reasons():
    caps = [EN, "two words", "a b c", "", None, "   ", "the red sky", EN]
    out = _run(pa.table({"uid": [str(i) for i in range(len(caps))], "caption": caps}))
    reasons = out["reject_reason"].to_pylist()
    assert reasons[0] is None and reasons[7] is None
    assert reasons[1] == "caption_too_short"  # 2 words
    assert reasons[2] == "caption_too_short"  # 3 words but 5 characters
    assert reasons[3] == reasons[4] == reasons[5] == "caption_empty"
    assert reasons[6] is None  # 3 words, 11 characters
    assert out["reject_stage"].to_pylist()[1] == "basic_filter"
    assert out["lang"].to_pylist()[0] == "en"


def test_language_id_is_real_fasttext():
    caps = [EN, "une photo d'un cercle rouge posé sur un fond blanc, avec beaucoup de lumière",
            "ein Foto von einem roten Kreis auf einem weißen Hintergrund, schön beleuchtet"]
    out = _run(pa.table({"caption": caps}))
    assert out["reject_reason"].to_pylist() == [None, "language:fr", "language:de"]
    assert out["lang_score"].to_pylist()[0] > 0.5
    # languages configurable: keep French too; an empty list turns LID off
    assert _run(pa.table({"caption": caps}), languages=["en", "fr"])["reject_reason"].to_pylist() == [
        None, None, "language:de"]
    assert _run(pa.table({"caption": caps}), languages=[])["reject_reason"].to_pylist() == [None, None, None]
    strict = _run(pa.table({"caption": [EN]}), min_lang_score=1.0)  # EN scores about 0.55
    assert strict["reject_reason"].to_pylist() == ["language_low_confidence"]


def test_image_rules_from_bytes_and_from_columns():
    images = [_jpeg(300, 250), _jpeg(150, 400), _jpeg(900, 250), b"", b"not an image", None]
    out = _run(pa.table({"caption": [EN] * 6, "image": pa.array(images, pa.binary())}))
    assert out["reject_reason"].to_pylist() == [None, "image_too_small", "aspect_ratio", "image_empty",
                                                "image_undecodable", None]
    assert out["width"].to_pylist()[:3] == [300, 150, 900]
    sized = _run(pa.table({"caption": [EN] * 2, "width": pa.array([640, 100], pa.int32()),
                           "height": pa.array([480, 100], pa.int32())}))
    assert sized["reject_reason"].to_pylist() == [None, "image_too_small"]
    relaxed = _run(pa.table({"caption": [EN], "image": [_jpeg(900, 250)]}), max_aspect_ratio=4.0)
    assert relaxed["reject_reason"].to_pylist() == [None]


def test_decompression_bomb_header_is_rejected_without_decoding():
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")  # 400 Mpx, compresses to a few KB
    out = _run(pa.table({"caption": [EN], "image": [buf.getvalue()]}))
    assert out["reject_reason"].to_pylist() == ["image_too_large"]


def test_huge_caption_does_not_crash():
    huge = ("a photo of a red circle " * 50_000)[:1_000_000]
    out = _run(pa.table({"caption": [huge]}), max_chars=0)
    assert out["reject_reason"].to_pylist() == [None]
    assert _run(pa.table({"caption": [huge]}), max_chars=5000)["reject_reason"].to_pylist() == ["caption_too_long"]


def test_rejected_rows_pass_through_untouched():
    table = pa.table({"caption": ["no", EN], "reject_stage": ["earlier", None], "reject_reason": ["why", None]})
    out = _run(table)
    assert out["reject_stage"].to_pylist() == ["earlier", None]
    assert out["reject_reason"].to_pylist() == ["why", None]
    assert out["lang"].to_pylist()[0] is None  # not even scored


def test_parameters_are_validated():
    with pytest.raises(WinnowError, match="unknown parameter 'min_word'"):
        BasicFilter(min_word=3)
    with pytest.raises(WinnowError, match="'min_words' must be int"):
        BasicFilter(min_words="three")
    assert BasicFilter(max_aspect_ratio=4).max_aspect_ratio == 4.0  # int accepted for float
