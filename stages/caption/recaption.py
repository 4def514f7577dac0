"""Recaptioning with a vision-language model: synthetic captions beside the alt-text, with provenance.

Synthetic captions help CLIP and text-to-image training when mixed with alt-text (VeCLIP,
Recap-DataComp-1B, CapsFusion). This stage writes ``caption_synthetic`` (a list when
``num_captions`` > 1) and records how each was made: model id and revision/checksum, the prompt as
rendered for the row, the generation parameters (JSON) and the seed. ``caption`` is never touched.

A row whose caption cannot be made (missing or undecodable image, a prompt that renders empty, a
generation error) gets a null ``caption_synthetic`` and a ``caption_error``; it is not rejected —
losing a synthetic caption is no reason to lose the sample. ``where`` restricts recaptioning to
rows matching a predicate (e.g. ``clip_score < 0.25``); other rows keep whatever the caption columns
already held (null the first time), so a second pass can fill in only what the first one missed.
"""
from __future__ import annotations

import io
import json
import string

import pyarrow as pa

from winnow.stages.base import MapStage, Param, Resources
from winnow.stages.columns import set_column
from winnow.stages.errors import WinnowError

OUT = "caption_synthetic"
PROVENANCE = {"caption_error": pa.string(), "caption_model": pa.string(), "caption_model_revision": pa.string(),
              "caption_prompt": pa.string(), "caption_gen_params": pa.string(), "caption_seed": pa.int64()}


class Recaption(MapStage):
    name = "recaption"
    help = "synthetic captions from a vision-language model (HF transformers or vLLM), with provenance"
    params = (
        Param("model", str, "", "HF hub id or local directory, e.g. Salesforce/blip-image-captioning-base"),
        Param("revision", str, "", "hub revision (commit / tag) to pin; recorded either way"),
        Param("prompt", str, "", "prompt template; {column} inserts a column, e.g. 'Alt-text: {caption}. "
                                 "Describe the image.' ('' = no text: unconditional captioning)"),
        Param("max_field_chars", int, 500, "inserted column values are cut to this many characters", min=1),
        Param("max_new_tokens", int, 64, "generated tokens per caption at most", min=1),
        Param("do_sample", bool, False, "sample (seeded per row) instead of greedy decoding"),
        Param("temperature", float, 1.0, "sampling temperature", min=0.0, open_min=True),
        Param("top_k", int, 0, "sampling: keep the k most likely tokens (0 = off)", min=0),
        Param("top_p", float, 1.0, "sampling: nucleus probability mass (1.0 = off)",
              min=0.0, max=1.0, open_min=True),
        Param("repetition_penalty", float, 1.0, "penalty on repeated tokens (1.0 = off)", min=0.0, open_min=True),
        Param("num_captions", int, 1, "captions per image; > 1 needs do_sample and makes a list column",
              min=1),
        Param("sample_seed", int, None, "sampling seed (default: the pipeline seed); row seeds = (seed, uid, k)"),
        Param("where", str, "", "recaption only rows matching this predicate, e.g. 'clip_score < 0.25'"),
        Param("gen_batch_size", int, 16, "images per generate call", min=1),
        Param("backend", str, "transformers", "generation engine", ("transformers", "vllm")),
        Param("device", str, "auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:N"),
        Param("dtype", str, "auto", "auto (bf16/fp16 on GPU, fp32 on CPU)",
              ("auto", "float32", "bfloat16", "float16")),
        Param("padding", str, "auto", "batching: auto, left (decoder-only), right (encoder-decoder), bucket "
                                      "(equal prompt lengths only)", ("auto", "left", "right", "bucket")),
        Param("trust_remote_code", bool, False, "allow model code from the hub (only for models you trust)"),
        Param("gpus", float, 1.0, "GPUs per worker (Ray actor pool); 0 for CPU-only workers", min=0.0),
        Param("cpus", float, 1.0, "CPUs per worker", min=0.0, open_min=True),
    )
    requires = ("uid", "image")
    resources = Resources(cpus=1, gpus=1)  # per instance: the cpus / gpus parameters
    batch_size = 512
    stateful = True
    reads_image = ("process_batch",)

    def validate(self):
        where = f"stage '{self.instance_name}' (recaption)"
        if not self.model:
            raise WinnowError(f"{where}: parameter 'model' is required (a hub id or a local directory)")
        if self.num_captions > 1 and not self.do_sample:
            raise WinnowError(f"{where}: num_captions > 1 needs do_sample: true (greedy captions are identical)")
        self.fields = _template_fields(self.prompt, where)
        self.requires = tuple(dict.fromkeys(("uid", "image", *self.fields)))
        self.resources = Resources(cpus=self.cpus, gpus=self.gpus)
        self.predicate = None
        if self.where:
            from winnow.stages.predicate import parse_predicate

            self.predicate = parse_predicate(self.where)
        self.gen_seed = self.seed if self.sample_seed is None else self.sample_seed

    def produces(self):
        out_type = pa.list_(pa.string()) if self.num_captions > 1 else pa.string()
        return {OUT: out_type, **PROVENANCE}

    def setup(self):
        from winnow.stages.caption.backend_hf import GenSettings, HFCaptioner

        args = (self.model, self.revision, self.device, self.dtype, self.trust_remote_code, self.padding)
        if self.backend == "vllm":
            from winnow.stages.caption.backend_vllm import VLLMCaptioner

            self.engine = VLLMCaptioner(*args, seed=self.gen_seed)
        else:
            self.engine = HFCaptioner(*args)
        self.engine.load()
        self.settings = GenSettings(self.max_new_tokens, self.do_sample, self.temperature, self.top_k, self.top_p,
                                    self.repetition_penalty)
        info = self.engine.provenance()
        self.gen_params = json.dumps(self._gen_params(info["dtype"], info["padding"]), sort_keys=True)

    def _gen_params(self, dtype: str, padding: str) -> dict:
        keys = ("backend", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
                "num_captions")
        return {**{k: self.config[k] for k in keys}, "dtype": dtype, "padding": padding}

    def provenance(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            info, params = engine.provenance(), json.loads(self.gen_params)
        else:  # not set up in this process (e.g. a resumed run with nothing left to do): no model load needed
            from winnow.stages.caption.backend_hf import resolve_revision

            info = {"model": self.model, "revision": resolve_revision(self.model, self.revision or None)}
            params = self._gen_params(self.dtype, self.padding)
        return {**info, "prompt_template": self.prompt, "where": self.where, "seed": self.gen_seed,
                "gen_params": params}

    def process_batch(self, table: pa.Table) -> pa.Table:
        n = table.num_rows
        columns = {name: _existing(table, name, typ, n) for name, typ in self.produces().items()}
        selected = self.predicate.mask(table).to_pylist() if self.predicate else [True] * n
        rows = [i for i in range(n) if selected[i]]
        prompts = self._prompts(table, rows)
        images, errors = _decode_images(table["image"], rows)
        for i in rows:
            if errors.get(i) is None and not prompts[i].strip() and self.prompt:
                errors[i] = "empty_prompt"  # the template rendered to nothing for this row: nothing to condition on
        todo = [i for i in rows if errors.get(i) is None]
        captions = self._generate(todo, images, prompts, table["uid"].to_pylist(), errors)
        model, revision = self.engine.provenance()["model"], self.engine.provenance()["revision"]
        for i in rows:
            caps = captions.get(i)
            ok = caps is not None and errors.get(i) is None
            columns[OUT][i] = (caps if self.num_captions > 1 else caps[0]) if ok else None
            columns["caption_error"][i] = None if ok else errors.get(i, "generation_failed")
            columns["caption_model"][i], columns["caption_model_revision"][i] = model, revision
            columns["caption_prompt"][i] = prompts[i]
            columns["caption_gen_params"][i], columns["caption_seed"][i] = self.gen_params, self.gen_seed
        for name, typ in self.produces().items():
            table = set_column(table, name, pa.array(columns[name], typ))
        return table

    def _prompts(self, table: pa.Table, rows: list[int]) -> dict[int, str]:
        values = {f: table[f].to_pylist() for f in self.fields}
        cut = self.max_field_chars
        return {i: self.prompt.format(**{f: "" if values[f][i] is None else str(values[f][i])[:cut]
                                         for f in self.fields}) for i in rows}

    def _generate(self, todo, images, prompts, uids, errors) -> dict[int, list[str]]:
        """Captions per row index; generation errors land in ``errors`` (one row at a time on failure)."""
        from winnow.kernels.seeded_sampling import row_seed

        k_n = self.num_captions
        seqs = [(i, k) for i in todo for k in range(k_n)]  # one sequence per (row, caption k)
        texts = [self.engine.render(prompts[i]) for i, _ in seqs]
        out: dict[int, list] = {i: [None] * k_n for i in todo}
        seeds = [row_seed(self.gen_seed, str(uids[i]), k) for i, k in seqs]
        skip = set()
        for j, why in enumerate(self.engine.too_long(texts)):  # found before generating, named for what it is
            if why:
                errors[seqs[j][0]] = f"generation_failed: {why}"
                skip.add(j)

        def run(part: list[int]) -> str | None:
            """Generate ``part``; returns the error text instead of raising (WinnowError = per-run: raised)."""
            try:
                caps = self.engine.generate([images[seqs[j][0]] for j in part], [texts[j] for j in part],
                                            [seeds[j] for j in part], self.settings)
            except WinnowError:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded per row, the run goes on
                first = (str(exc).splitlines() or [""])[0][:200]
                return f"generation_failed: {type(exc).__name__}: {first}"
            for j, cap in zip(part, caps):
                out[seqs[j][0]][seqs[j][1]] = cap
            return None

        for chunk in self.engine.chunks(texts, self.gen_batch_size):
            chunk = [j for j in chunk if j not in skip]
            if not chunk or run(chunk) is None:
                continue
            for j in chunk:  # one bad input must not cost the others their captions
                failed = run([j])
                if failed:
                    errors[seqs[j][0]] = failed
        if todo and all(errors.get(i) for i in todo) and len(todo) > 1:
            raise WinnowError(f"recaption: generation failed for every row ({errors[todo[0]]}); check the model "
                              "and the prompt")
        return {i: caps for i, caps in out.items() if errors.get(i) is None and None not in caps}


def _template_fields(template: str, where: str) -> tuple[str, ...]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise WinnowError(f"{where}: parameter 'prompt' is not a valid template ({exc}); write {{{{ for a brace"
                          ) from None
    fields = []
    for _, field, spec, conv in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conv:
            raise WinnowError(f"{where}: parameter 'prompt': placeholder {{{field}}} must be a plain column name "
                              "like {caption}")
        fields.append(field)
    return tuple(dict.fromkeys(fields))


def _existing(table: pa.Table, name: str, typ: pa.DataType, n: int) -> list:
    """Current values of an output column (a second pass keeps what it does not redo), else nulls."""
    if name in table.column_names and table.schema.field(name).type == typ:
        return table[name].to_pylist()
    return [None] * n


def _decode_images(column: pa.ChunkedArray, rows: list[int]) -> tuple[dict, dict]:
    """PIL RGB images for ``rows``, and a reason for each row whose image cannot be used."""
    from PIL import Image

    images, errors = {}, {}
    for i in rows:
        data = column[i].as_py()
        if not data:
            errors[i] = "image_missing" if data is None else "image_empty"
            continue
        try:
            with Image.open(io.BytesIO(data)) as im:
                images[i] = im.convert("RGB")
        except Image.DecompressionBombError:
            errors[i] = "image_too_large"
        except Exception:  # noqa: BLE001 - any decoder failure is a per-row fact
            errors[i] = "image_undecodable"
    return images, errors
