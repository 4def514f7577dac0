"""Per-row seeded Gumbel sampling: exact samples, independent of batching, same on CPU and GPU."""
import pytest
import torch

from winnow.kernels.seeded_sampling import SeededGumbel, gumbel_noise, row_seed, uniform_noise


def test_row_seeds_are_stable_and_distinct():
    seeds = {row_seed(0, f"u{i}", k) for i in range(500) for k in range(3)}
    assert len(seeds) == 1500 and all(0 <= s < 2**63 for s in seeds)
    assert row_seed(0, "u1", 0) == row_seed(0, "u1", 0) != row_seed(1, "u1", 0)


def test_noise_is_uniform_and_uncorrelated():
    seeds = torch.tensor([row_seed(0, "a"), row_seed(0, "b")])
    u = uniform_noise(seeds, 0, 200_000)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.std().item() - 12 ** -0.5) < 0.005
    assert abs(torch.corrcoef(u)[0, 1].item()) < 0.01  # rows
    assert abs(torch.corrcoef(torch.stack([u[0], uniform_noise(seeds, 1, 200_000)[0]]))[0, 1].item()) < 0.01


def test_argmax_of_noised_logits_samples_the_softmax():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    seeds = torch.tensor([row_seed(3, str(i)) for i in range(40_000)])
    draws = (probs.log()[None, :] + gumbel_noise(seeds, 2, 4)).argmax(1)
    freq = torch.bincount(draws, minlength=4) / len(seeds)
    assert torch.allclose(freq, probs, atol=0.01)


def test_noise_depends_on_row_seed_and_step_not_on_batch_or_prompt_length():
    seeds = [row_seed(0, f"u{i}") for i in range(5)]
    scores = torch.randn(5, 50)
    batch = SeededGumbel(seeds)
    out = batch(torch.zeros(5, 9, dtype=torch.long), scores)
    alone = SeededGumbel(seeds[2:3])
    assert torch.equal(alone(torch.zeros(1, 4, dtype=torch.long), scores[2:3]), out[2:3])  # shorter prompt
    nxt = batch(torch.zeros(5, 10, dtype=torch.long), scores)
    assert not torch.equal(nxt, out)  # step 1 draws new noise
    masked = scores.clone()
    masked[:, 10:] = float("-inf")
    assert torch.isinf(SeededGumbel(seeds)(torch.zeros(5, 3, dtype=torch.long), masked)[:, 10:]).all()
    with pytest.raises(ValueError, match="rows"):
        SeededGumbel(seeds)(torch.zeros(4, 3, dtype=torch.long), scores[:4])


@pytest.mark.gpu
def test_cuda_noise_equals_cpu_noise():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    seeds = torch.tensor([row_seed(0, f"u{i}") for i in range(8)])
    assert torch.equal(uniform_noise(seeds, 5, 1000), uniform_noise(seeds.cuda(), 5, 1000).cpu())
