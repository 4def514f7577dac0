import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow.pipeline.inputs import list_shards, read_shard
from winnow.stages.errors import WinnowError


def _read(path, columns=None):
    return read_shard(list_shards(str(path))[0], columns)


def test_conceptual_captions_tsv_without_header(shared_data):
    table = _read(shared_data / "captions" / "cc3m_val.tsv")
    assert table.num_rows == 15_833
    assert table["url"][0].as_py().startswith("http")
    assert len(table["caption"][0].as_py().split()) > 2
    assert len(table["uid"].unique()) == table.num_rows


def test_laion_style_csv_and_extra_columns_carried(tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text('URL,TEXT,similarity\nhttp://a/x.jpg,"a cat, sitting",0.31\nhttp://a/y.jpg,1984,0.2\n')
    table = _read(path)
    assert table["url"].to_pylist() == ["http://a/x.jpg", "http://a/y.jpg"]
    assert table["caption"].to_pylist() == ["a cat, sitting", "1984"]  # numbers stay text
    assert "similarity" in table.column_names


def test_jsonl_and_explicit_mapping(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(json.dumps({"link": f"http://h/{i}", "alt": f"alt {i}", "k": i}) for i in range(3)))
    table = _read(path, {"url": "link", "caption": "alt"})
    assert table["url"].to_pylist()[2] == "http://h/2"
    assert table["caption"].to_pylist()[0] == "alt 0"
    with pytest.raises(WinnowError, match="mapped column 'nope'"):
        _read(path, {"url": "nope"})


def test_img2dataset_output_layout(tmp_path):
    pq.write_table(pa.table({"key": ["000000000"], "url": ["http://x/1.jpg"], "caption": ["c a p"],
                             "jpg": pa.array([b"\xff\xd8"], pa.binary()), "status": ["success"],
                             "width": pa.array([10], pa.int64())}), tmp_path / "00000.parquet")
    table = _read(tmp_path / "00000.parquet")
    assert table["image"].to_pylist() == [b"\xff\xd8"]
    assert table.schema.field("width").type == pa.int32()
    assert "status" in table.column_names and "key" in table.column_names


def test_uids_taken_from_input_or_deterministic(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("url,caption\nhttp://a/1,same\nhttp://a/1,same\nhttp://a/2,other\n")
    first, second = _read(path)["uid"].to_pylist(), _read(path)["uid"].to_pylist()
    assert first == second and len(set(first)) == 3
    pq.write_table(pa.table({"uid": ["u1"], "url": ["http://a/1"], "caption": ["x y z"]}), tmp_path / "b.parquet")
    assert _read(tmp_path / "b.parquet")["uid"].to_pylist() == ["u1"]


def test_directory_and_glob_listing(tmp_path):
    for i in range(3):
        pq.write_table(pa.table({"url": [f"http://h/{i}"]}), tmp_path / f"p{i}.parquet")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [s.index for s in list_shards(str(tmp_path))] == [0, 1, 2]
    assert len(list_shards(str(tmp_path / "p[01].parquet"))) == 2


@pytest.mark.torture
def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(WinnowError, match="no such file"):
        list_shards(str(tmp_path / "missing.parquet"))
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(WinnowError, match="corrupt.parquet: cannot be read as parquet"):
        _read(bad)
    nocols = tmp_path / "nocols.csv"
    nocols.write_text("foo,bar\n1,2\n")
    with pytest.raises(WinnowError, match="no URL or image column"):
        _read(nocols)
    wrong = tmp_path / "wrongtype.parquet"
    pq.write_table(pa.table({"url": ["u"], "image": pa.array([[1, 2]])}), wrong)
    with pytest.raises(WinnowError, match="column 'image' has type"):
        _read(wrong)
