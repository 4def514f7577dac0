"""Model loading shared by stages: open_clip specs and checkpoints (clip), Hugging Face image classifiers
(hf_classifier), tiny random-weight models built from configs shipped in configs/ (tiny_vlm, tiny_classifier)."""
