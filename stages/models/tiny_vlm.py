"""Tiny RANDOM-WEIGHT vision-language models built offline from configs in the repo.

Nothing here is a real captioner: the weights are random and the captions are noise. These models
exist so tests, the demo and the benchmarks exercise the real loading and generation path
(``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained`` on a local directory, exactly
what a hub id resolves to) without any model hub. ``stages/models/configs/vlm/<arch>/`` holds the
model config, the image-processor config and (for chat models) a chat template; the tokenizer is a
WordPiece tokenizer built from ``vocab.txt`` there, plus each architecture's special tokens.

    python -m winnow.stages.models.tiny_vlm qwen2_vl /tmp/tiny-qwen2-vl
"""
from __future__ import annotations

import json
import os
import sys

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "vlm")
ARCHITECTURES = ("blip", "qwen2_vl", "llava")
MARKER = "TINY_RANDOM_MODEL.txt"

# Special tokens each architecture's processor and model refer to by name.
_SPECIAL = {
    "blip": {"bos_token": "[DEC]"},
    "qwen2_vl": {"eos_token": "<|im_end|>", "extra": ["<|im_start|>", "<|vision_start|>", "<|vision_end|>",
                                                      "<|image_pad|>", "<|video_pad|>"]},
    "llava": {"eos_token": "</s>", "bos_token": "<s>", "extra": ["<image>"]},
}


def _read(arch: str, name: str):
    path = os.path.join(CONFIG_ROOT, arch, name)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f) if name.endswith(".json") else f.read()


def build_tokenizer(arch: str):
    """A WordPiece tokenizer over the repo's small vocabulary with ``arch``'s special tokens added.

    BLIP gets BERT's tokenizer (as the real checkpoints do: [CLS] ... [SEP]); the decoder-only chat
    models get a plain fast tokenizer that adds no special tokens (their chat template places them).
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece
    from transformers import BertTokenizer, PreTrainedTokenizerFast
    from transformers.models.bert.tokenization_bert import load_vocab

    vocab = dict(load_vocab(os.path.join(CONFIG_ROOT, "vocab.txt")))
    names = ["input_ids", "attention_mask"]  # VLMs take no BERT segment ids
    if arch == "blip":
        tok = BertTokenizer(vocab=vocab, do_lower_case=True, model_input_names=names)
    else:
        core = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
        core.normalizer = normalizers.BertNormalizer(lowercase=True)
        core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        core.decoder = decoders.WordPiece(prefix="##")
        tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                      sep_token="[SEP]", mask_token="[MASK]", model_input_names=names)
    special = dict(_SPECIAL[arch])
    extra = special.pop("extra", [])
    tok.add_special_tokens(special)
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    return tok


def _fill_token_ids(arch: str, cfg: dict, tok) -> dict:
    """Point the model config at the tokenizer's ids (vocab size, pad/eos/bos, image tokens)."""
    ids = tok.convert_tokens_to_ids
    text = cfg["text_config"]
    text["vocab_size"] = len(tok)
    if arch == "blip":
        text.update(bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id,
                    eos_token_id=tok.sep_token_id)
    elif arch == "qwen2_vl":
        text.update(bos_token_id=ids("<|im_start|>"), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        cfg.update(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                   vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    elif arch == "llava":
        text.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        cfg["image_token_index"] = ids("<image>")
    return cfg


def build_processor(arch: str, image_overrides: dict | None = None):
    tok = build_tokenizer(arch)
    image_cfg = {**_read(arch, "preprocessor_config.json"), **(image_overrides or {})}
    template = _read(arch, "chat_template.jinja")
    if arch == "blip":
        from transformers import BlipImageProcessor, BlipProcessor

        return BlipProcessor(image_processor=BlipImageProcessor(**_without_type(image_cfg)), tokenizer=tok)
    if arch == "qwen2_vl":
        from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

        kwargs = _without_type(image_cfg)
        return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**kwargs),
                                video_processor=Qwen2VLVideoProcessor(), tokenizer=tok, chat_template=template)
    if arch == "llava":
        from transformers import CLIPImageProcessor, LlavaProcessor

        model_cfg = _read(arch, "config.json")
        return LlavaProcessor(image_processor=CLIPImageProcessor(**_without_type(image_cfg)), tokenizer=tok,
                              patch_size=model_cfg["vision_config"]["patch_size"],
                              vision_feature_select_strategy=model_cfg.get("vision_feature_select_strategy",
                                                                           "default"),
                              num_additional_image_tokens=1,  # the CLS the vision tower adds
                              chat_template=template)
    raise ValueError(f"unknown tiny architecture '{arch}'; choose from {', '.join(ARCHITECTURES)}")


def _without_type(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "image_processor_type"}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_tiny_vlm(arch: str, out_dir: str, seed: int = 0, overrides: dict | None = None,
                   device: str = "cpu", dtype: str | None = None, image_overrides: dict | None = None) -> str:
    """Build ``arch`` with random weights (seeded), save model + processor to ``out_dir``; returns it.

    ``overrides`` deep-merges into the repo config (the GPU benchmark scales the same architecture to
    ~2B parameters this way), ``image_overrides`` into the image-processor config; ``device`` / ``dtype``
    say where to initialise and how to store the weights.
    A directory that already holds a finished build of the same arch, seed and overrides is reused.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture '{arch}'; choose from {', '.join(ARCHITECTURES)}")
    marker = os.path.join(out_dir, MARKER)
    extra = json.dumps([overrides or {}, image_overrides or {}], sort_keys=True)
    stamp = (f"random-weight {arch} (seed {seed}, overrides {extra}, dtype {dtype or 'float32'}) built by "
             "pipeline/tiny_vlm.py: NOT a real captioner\n")
    if os.path.exists(marker) and open(marker, encoding="utf-8").read() == stamp:
        return out_dir
    processor = build_processor(arch, image_overrides)
    cfg = _fill_token_ids(arch, _merge(_read(arch, "config.json"), overrides or {}), processor.tokenizer)
    if overrides and "vocab_size" in overrides.get("text_config", {}):  # a realistic LM head, unused ids
        cfg["text_config"]["vocab_size"] = max(overrides["text_config"]["vocab_size"], len(processor.tokenizer))
    config = AutoConfig.for_model(**cfg)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype or "float32"))
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    if arch != "blip":
        model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
        model.generation_config.bos_token_id = cfg["text_config"]["bos_token_id"]
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    with open(marker, "w", encoding="utf-8") as f:
        f.write(stamp)
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(f"usage: python -m winnow.stages.models.tiny_vlm {{{'|'.join(ARCHITECTURES)}}} OUT_DIR [SEED]")
    print(build_tiny_vlm(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 0))
