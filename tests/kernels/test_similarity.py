"""Paired cosine: torch kernel vs numpy reference, on CPU and (when present) GPU."""
import numpy as np
import pytest
import torch

from winnow.kernels.similarity import normalize, paired_cosine, paired_cosine_reference


def test_matches_reference_and_returns_unit_vectors():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 64)), rng.normal(size=(50, 64))
    scores, na, nb = paired_cosine(torch.tensor(a), torch.tensor(b))
    assert scores.dtype == torch.float32 and scores.shape == (50,)
    np.testing.assert_allclose(scores.numpy(), paired_cosine_reference(a, b), atol=1e-6)
    np.testing.assert_allclose(torch.linalg.vector_norm(na, dim=-1).numpy(), 1.0, atol=1e-6)
    b[0] = a[0] * 3.0  # same direction -> 1, opposite -> -1
    b[1] = -a[1]
    s = paired_cosine(torch.tensor(a), torch.tensor(b))[0]
    assert s[0].item() == pytest.approx(1.0, abs=1e-6) and s[1].item() == pytest.approx(-1.0, abs=1e-6)


def test_half_precision_inputs_are_summed_in_float32():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 768)), rng.normal(size=(20, 768))
    s16 = paired_cosine(torch.tensor(a, dtype=torch.float16), torch.tensor(b, dtype=torch.float16))[0]
    assert s16.dtype == torch.float32
    np.testing.assert_allclose(s16.numpy(), paired_cosine_reference(a, b), atol=2e-3)


def test_zero_vector_scores_zero_not_nan():
    z = torch.zeros(1, 8)
    assert torch.equal(normalize(z), z)
    assert paired_cosine(z, torch.ones(1, 8))[0].item() == 0.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_reference():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4096, 512)), rng.normal(size=(4096, 512))
    s = paired_cosine(torch.tensor(a, device="cuda", dtype=torch.float16),
                      torch.tensor(b, device="cuda", dtype=torch.float16))[0]
    assert s.device.type == "cuda"
    np.testing.assert_allclose(s.cpu().numpy(), paired_cosine_reference(a, b), atol=2e-3)
