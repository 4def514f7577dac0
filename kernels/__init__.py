"""winnow kernels: pure compute on arrays/tensors. No I/O, no pyarrow, no ray.

Not Hugging Face's ``kernels`` package: ``__winnow__`` marks this one (a test checks that
transformers does not take it for HF's).
"""
__winnow__ = True
