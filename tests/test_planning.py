"""The memory planner (workbench/methods/planning.py): estimates against peak memory measured by
PyTorch's own CPU allocator (the profiler's allocation records, which carry the allocator's running
total), chunks kept to a given budget with unchanged numbers, and budgets too small to run."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import workbench
from workbench.methods import LogitDiff, ablation_sweep, activation_patching
from workbench.methods import _resume
from workbench.methods.planning import MemoryBudgetError, cache_peak_bytes, parse_memory


def measured_peak(fn) -> int:
    """Peak bytes PyTorch's CPU allocator held during fn() above what it held before."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations = []  # (time, bytes allocated (negative: freed), allocator total after it)

    def walk(events):
        for e in events:
            if str(e.tag) == "_EventType.Allocation":
                allocations.append((e.start_time_ns, e.extra_fields.alloc_size, e.extra_fields.total_allocated))
            walk(e.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    allocations.sort()
    _, size, total = allocations[0]
    return max(t for _, _, t in allocations) - (total - size)


@pytest.fixture(scope="module")
def small_vocab_model():
    """2 layers, d_model 64, a 256-token vocabulary: the cache, not the logits, dominates memory."""
    torch.manual_seed(0)
    cfg = workbench.GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=128, vocab_size=256)
    return workbench.GPT(cfg).eval()


def pair(batch: int, pos: int, vocab: int = 256):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, vocab, (batch, pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = (corrupted[:, 1] + 1) % vocab
    metric = LogitDiff(torch.randint(0, vocab, (batch,), generator=g), torch.randint(0, vocab, (batch,), generator=g))
    return clean, corrupted, metric


def test_cache_estimate_within_20_percent_of_measured_peak(small_vocab_model):
    tokens = torch.randint(0, 256, (8, 128))
    with torch.no_grad():
        peak = measured_peak(lambda: small_vocab_model.run_with_cache(tokens))
    estimate = cache_peak_bytes(small_vocab_model, (8, 128))
    assert abs(estimate - peak) <= 0.2 * peak, (estimate, peak)


@pytest.mark.parametrize("memory", [None, "24MB"])
def test_sweep_estimate_within_20_percent_of_measured_peak(small_vocab_model, memory):
    clean, corrupted, metric = pair(8, 64)
    out = {}

    def sweep():
        out["r"] = activation_patching(small_vocab_model, clean, corrupted, metric, target="resid_pre",
                                       progress=False, memory=memory)

    with torch.no_grad():
        peak = measured_peak(sweep)
    plan = out["r"].memory_plan
    assert abs(plan.peak - peak) <= 0.2 * peak, (plan.format(), peak)
    if memory is not None:
        assert len(plan.chunks) > 2  # the budget, not TOKEN_BUDGET, cut the chunks
        assert peak <= parse_memory(memory)


def test_tight_budget_gives_the_same_numbers(small_vocab_model):
    clean, corrupted, metric = pair(4, 32)
    free = activation_patching(small_vocab_model, clean, corrupted, metric, target="head_out", progress=False)
    tight = activation_patching(small_vocab_model, clean, corrupted, metric, target="head_out", progress=False,
                                memory="2.6MB")
    assert len(tight.memory_plan.chunks) > len(free.memory_plan.chunks)
    torch.testing.assert_close(tight.values, free.values, atol=1e-5, rtol=0)
    # and against one forward per cell with a hook (the independent reference)
    with torch.no_grad():
        _, clean_cache = small_vocab_model.run_with_cache(clean)
        for layer in range(2):
            for head in range(4):
                name = workbench.act_name("z", layer)

                def patch(z, hook, head=head, name=name):
                    z[:, :, head] = clean_cache[name][:, :, head]
                    return z

                value = metric(small_vocab_model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)]))
                assert abs(float(value) - float(tight.values[layer, head])) < 1e-4


def test_budget_smaller_than_one_chunk_is_an_error(small_vocab_model):
    clean, corrupted, metric = pair(8, 64)
    with pytest.raises(MemoryBudgetError, match=r"needs at least [0-9.]+ MiB.*--memory"):
        activation_patching(small_vocab_model, clean, corrupted, metric, memory="1MB", progress=False)
    with pytest.raises(MemoryBudgetError, match="needs at least"):
        ablation_sweep(small_vocab_model, clean, metric, memory=100_000, progress=False)


@pytest.mark.parametrize("bad", ["lots", "-2GB", "3 parsecs", 0, True])
def test_bad_memory_option(small_vocab_model, bad):
    clean, corrupted, metric = pair(2, 8)
    with pytest.raises(workbench.errors.InputError, match="memory"):
        activation_patching(small_vocab_model, clean, corrupted, metric, memory=bad, progress=False)


def test_memory_sizes():
    assert parse_memory("2GiB") == 2 * 2**30
    assert parse_memory("1.5 GB") == 1_500_000_000
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory(1000) == 1000


def test_out_of_memory_splits_the_chunk(small_vocab_model, monkeypatch):
    """A chunk the device has no memory for is run in halves, with the same numbers."""
    clean, corrupted, metric = pair(4, 16)
    expected = activation_patching(small_vocab_model, clean, corrupted, metric, target="head_out", progress=False)
    run_chunk, sizes = _resume._run_chunk, []

    def limited(model, base, chunk, *args):
        if len(chunk) > 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        sizes.append(len(chunk))
        return run_chunk(model, base, chunk, *args)

    monkeypatch.setattr(_resume, "_run_chunk", limited)
    got = activation_patching(small_vocab_model, clean, corrupted, metric, target="head_out", progress=False)
    assert max(sizes) <= 2
    torch.testing.assert_close(got.values, expected.values, atol=1e-5, rtol=0)
    monkeypatch.setattr(_resume, "_run_chunk", lambda *a: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(MemoryBudgetError, match="one cell"):
        activation_patching(small_vocab_model, clean, corrupted, metric, target="head_out", progress=False)
