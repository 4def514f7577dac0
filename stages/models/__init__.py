"""Model loading shared by stages: open_clip specs and checkpoints (clip), tiny VLMs built from
configs shipped in configs/ (tiny_vlm)."""
