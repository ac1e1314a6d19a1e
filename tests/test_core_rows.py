"""mllm.llama_rows: several prompts on one static cache give, row by row, the logits of each prompt on its own
(the single-sequence lean loop): bit for bit at fp16 on CPUs with AVX-512 (fbgemm's kernels there compute each row
of a matrix on its own, tested here at the shipped LLM's widths; its AVX2 kernels do not, so there within float
rounding), within float rounding at fp32 (MKL's sgemm picks its kernel by the number of
rows) and bf16 (oneDNN splits a wide layer's reduction across threads for some matrix heights). A cache that
starts small and grows gives the logits of one allocated whole."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from serve_support import lively_assistant

from mllm.bf16_linear import bf16_kernels_available
from mllm.fp16_linear import rows_exact
from mllm.llama_rows import rows_for
from mllm.llama_step import stepper_for


@pytest.fixture(scope="module")
def llm() -> torch.nn.Module:
    return lively_assistant(precision="fp32").model.llm


@pytest.fixture(scope="module", params=["fp32", "fp16", "bf16"])
def any_llm(request: pytest.FixtureRequest) -> torch.nn.Module:
    if request.param == "bf16" and not bf16_kernels_available():
        pytest.skip("no oneDNN bf16 kernels on this CPU")
    return lively_assistant(precision=request.param).model.llm


def _agreement(llm: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """How closely a row must match the prompt alone at the LLM's precision (see the module docstring)."""
    names = {m._get_name() for m in llm.modules()}
    if "PackedBf16Linear" in names:
        return lambda a, b: torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * float(b.abs().max()))
    if "Linear" in names or not rows_exact():  # MKL's fp32 sgemm, or fbgemm's fp16 kernels without AVX-512
        return lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    return lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fp16_kernels_compute_each_row_on_its_own() -> None:
    """What makes fp16 batches exact on CPUs with AVX-512: fbgemm's fp16 GEMM gives a row the same bits in any
    matrix, at the shipped LLM's widths and the heights where oneDNN's bf16 kernels do not (60 rows inside
    160-250); with AVX2 only it does not, and a row agrees within float rounding."""
    from torch.ao.nn.quantized import dynamic as quantized_dynamic

    generator = torch.Generator().manual_seed(0)
    for features_in, features_out in ((1536, 576), (576, 1536)):
        layer = quantized_dynamic.Linear(features_in, features_out, dtype=torch.float16)
        layer.set_weight_bias(torch.randn(features_out, features_in, generator=generator) * 0.05, None)
        x = torch.randn(250, features_in, generator=generator)
        pairs = [(layer(x[h - 60 : h]), layer(x[:h])[h - 60 :]) for h in (160, 205, 250)]
        pairs.append((layer(x[7:8]), layer(x)[7:8]))
        for alone, stacked in pairs:
            if rows_exact():
                assert torch.equal(alone, stacked)
            else:  # AVX2: the same sums, rounded in another order
                torch.testing.assert_close(alone, stacked, rtol=1e-5, atol=1e-5 * float(alone.abs().max()))


def _prompts(llm: torch.nn.Module) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    vocab = llm.config.vocab_size
    with torch.inference_mode():
        return [
            llm.get_input_embeddings()(torch.randint(vocab, (1, n), generator=generator))[0]
            for n in (7, 7, 3, 12, 12, 12)
        ]


def test_rows_compute_what_each_prompt_computes_alone(any_llm: torch.nn.Module) -> None:
    llm = any_llm
    same = _agreement(llm)

    # neighbours of equal length, which a batched attention call would round differently on some CPUs
    prompts = _prompts(llm)
    tokens = torch.tensor([11, 22, 33, 44, 55, 66])
    stepping = [0, 1, 2, 4, 5]  # row 3 has finished: it drops out of the step
    with torch.inference_mode():
        rows = rows_for(llm, 20, len(prompts))
        assert rows is not None
        together = rows.prefill_rows(torch.cat(prompts), [len(p) for p in prompts])
        after = rows.step_rows(tokens[stepping], stepping)
        for index, prompt in enumerate(prompts):
            alone = stepper_for(llm, 20)
            same(alone.prefill(prompt[None]), together[index : index + 1])
            if index in stepping:
                step = alone.step(tokens[index].view(1, 1))
                same(step[0], after[stepping.index(index)])
        assert rows.lengths == [8, 8, 4, 12, 13, 13]


def test_a_growing_cache_gives_the_logits_of_a_whole_one(llm: torch.nn.Module) -> None:
    prompts = _prompts(llm)[2:5]
    lengths = [len(p) for p in prompts]
    with torch.inference_mode():
        whole = rows_for(llm, 40, 3)
        small = rows_for(llm, 40, 3, capacity=4)  # grows in the prefill (12 positions), then twice in steps
        assert small.capacity == 4
        assert torch.equal(
            whole.prefill_rows(torch.cat(prompts), lengths), small.prefill_rows(torch.cat(prompts), lengths)
        )
        tokens = torch.tensor([5, 6, 7])
        for _ in range(20):
            a, b = whole.step_rows(tokens, [0, 1, 2]), small.step_rows(tokens, [0, 1, 2])
            assert torch.equal(a, b)
            tokens = a.argmax(-1)
        assert small.capacity >= 32 and small.capacity <= 40
        with pytest.raises(ValueError, match="longer than the static cache"):
            for _ in range(10):
                small.step_rows(tokens, [0, 1, 2])


def test_rows_after_a_shared_header_compute_what_each_prompt_computes_alone(any_llm: torch.nn.Module) -> None:
    """Rows that start from a header's keys and values (computed once on their own) and prefill the rest give
    what the single-sequence loop gives after the same prefix (the chat path on a prefix-cache hit)."""
    llm = any_llm
    same = _agreement(llm)
    header_ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.inference_mode():
        embed = llm.get_input_embeddings()
        header_stepper = stepper_for(llm, 5)
        header_stepper.prefill(embed(header_ids))
        header = header_stepper.prefix()
        rests = [
            embed(torch.tensor([ids]))[0] for ids in ([7, 8, 9], [17, 18, 19], [10], [11, 12, 13, 14, 15, 16])
        ]
        rows = rows_for(llm, 20, 4, capacity=6)
        rows.take_prefix_rows(range(4), header)
        together = rows.prefill_rows(torch.cat(rests), [len(r) for r in rests])
        assert rows.lengths == [8, 8, 6, 11]
        for index, rest in enumerate(rests):
            alone = stepper_for(llm, 20)
            alone.take_prefix(header)
            same(alone.prefill(rest[None]), together[index : index + 1])
