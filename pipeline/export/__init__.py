"""Exports of a finished run as training sets: webdataset for open_clip, a DataComp subset, Hugging Face Parquet.

`exports:` in a pipeline and `winnow export RUN_DIR` both go through ``main.run_export``.
"""
