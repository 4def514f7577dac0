"""vLLM generation backend for the recaption stage (GPU hosts with ``vllm`` installed; optional).

Prompts are rendered with the checkpoint's own HF processor (chat template), so both backends
feed the model the same text; vLLM batches continuously (PagedAttention) and takes one request
per (image, prompt). Each request carries its row seed, so samples stay a function of
(seed, uid, k) as with the transformers backend — but vLLM's sampler is not ours: the two backends
do not produce the same samples, and provenance records which backend made a caption.
"""
from __future__ import annotations

from winnow.stages.caption.backend_hf import GenSettings, HFCaptioner
from winnow.stages.errors import WinnowError


class VLLMCaptioner(HFCaptioner):
    def __init__(self, *args, seed: int = 0):
        super().__init__(*args)
        self.seed = seed

    def load_model(self, kw: dict) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise WinnowError("recaption: backend 'vllm' needs the vllm package (GPU hosts: pip install vllm); "
                              "use backend: transformers") from None
        if self.device.type != "cuda":
            raise WinnowError("recaption: backend 'vllm' needs a CUDA GPU on the worker; use backend: transformers")
        self.llm = LLM(model=self.model_id, revision=self.revision, dtype=str(self.dtype).removeprefix("torch."),
                       trust_remote_code=self.trust_remote_code, seed=self.seed, limit_mm_per_prompt={"image": 1})
        self.model = None
        self.forward_args = set()

    def chunks(self, texts: list[str], batch_size: int) -> list[list[int]]:
        # vLLM schedules and pads internally; hand it large chunks so continuous batching has work.
        size = max(batch_size, 256)
        return [list(range(i, min(i + size, len(texts)))) for i in range(0, len(texts), size)]

    def generate(self, images: list, texts: list[str], seeds: list[int], gen: GenSettings) -> list[str]:
        from vllm import SamplingParams

        params = [SamplingParams(n=1, max_tokens=gen.max_new_tokens, seed=seed,
                                 temperature=gen.temperature if gen.do_sample else 0.0,
                                 top_k=gen.top_k if gen.do_sample and gen.top_k > 0 else -1,
                                 top_p=gen.top_p if gen.do_sample else 1.0,
                                 repetition_penalty=gen.repetition_penalty) for seed in seeds]
        requests = [{"prompt": text, "multi_modal_data": {"image": image}} for image, text in zip(images, texts)]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outputs]

    def provenance(self) -> dict:
        import vllm

        info = super().provenance()
        info.update(auto_class="vllm.LLM", vllm=vllm.__version__)
        return info
