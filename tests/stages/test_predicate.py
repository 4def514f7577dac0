"""The `where` predicate language: SQL-like comparisons parsed without eval, evaluated with pyarrow."""
import pyarrow as pa
import pytest

from winnow.stages.errors import WinnowError
from winnow.stages.predicate import parse_predicate

TABLE = pa.table({"clip_score": pa.array([0.1, 0.3, None, 0.2], pa.float32()),
                  "lang": ["en", "fr", "en", None], "n": [1, 2, 3, 4], "ok": [True, False, True, None]})


@pytest.mark.parametrize("text, expected", [
    ("clip_score < 0.25", [True, False, False, True]),
    ("clip_score >= 0.25", [False, True, False, False]),
    ("clip_score < 0.25 and lang == 'en'", [True, False, False, False]),
    ("clip_score < 0.15 or n >= 4", [True, False, False, True]),
    ("not (clip_score >= 0.25)", [True, False, False, True]),  # null stays unselected under negation
    ("lang in ('en', \"de\") or n > 3", [True, False, True, True]),
    ("lang not in ('en')", [False, True, False, False]),
    ("lang is null", [False, False, False, True]),
    ("clip_score IS NOT NULL AND NOT lang = 'fr'", [True, False, False, False]),
    ("ok == true", [True, False, True, False]),
    ("n != 2 and n < 1e1", [True, False, True, True]),
    ("n > -1.5", [True, True, True, True]),
    ("(n = 1 or n = 2) and (lang = 'fr' or lang = 'en')", [True, True, False, False]),
    ("true", [True, True, True, True]),
])
def test_predicates(text, expected):
    pred = parse_predicate(text)
    assert pred.mask(TABLE).to_pylist() == expected


def test_columns_are_collected_and_checked():
    pred = parse_predicate("clip_score < 0.2 and (lang = 'en' or aesthetic > 5)")
    assert pred.columns == ("clip_score", "lang", "aesthetic")
    with pytest.raises(WinnowError, match="column 'aesthetic'"):
        pred.mask(TABLE)


@pytest.mark.parametrize("text, message", [
    ("clip_score <", "end of text"),
    ("clip_score < 0.2 and", "end of text"),
    ("open('x')", "expected a comparison after 'open'"),
    ("__import__('os').system('x')", "cannot read"),
    ("n < 1 )", r"unexpected '\)'"),
    ("3", "expected a comparison"),
    ("n in (lang)", "in' list"),
    ("n ~ 3", "cannot read"),
    ("lang is 3", "expected null"),
])
def test_syntax_errors_are_one_line(text, message):
    with pytest.raises(WinnowError, match=message) as err:
        parse_predicate(text)
    assert "\n" not in str(err.value)


def test_type_errors_name_the_column():
    with pytest.raises(WinnowError, match="lang: string"):
        parse_predicate("lang < 3").mask(TABLE)
    with pytest.raises(WinnowError, match=r"lang \(string\) in \[1\]"):
        parse_predicate("lang in (1)").mask(TABLE)
