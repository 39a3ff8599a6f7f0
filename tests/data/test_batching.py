import torch

from tunelab.data.batching import collate, epoch_order, forward_batches, micro_batches
from tunelab.data.encode import IGNORE_INDEX, Encoded


def sample(length: int, start: int = 1) -> Encoded:
    ids = list(range(start, start + length))
    return Encoded(ids, [IGNORE_INDEX] * (length // 2) + ids[length // 2 :], length)


def test_packed_rows_restart_positions_and_never_learn_across_samples() -> None:
    a, b, c = sample(5), sample(3, 50), sample(6, 80)
    batch = collate([a, b, c], pad_id=0, pack_length=9)
    assert batch.attention_mask is None
    assert batch.input_ids.shape == (2, 9)
    assert batch.real_tokens == 14 and batch.padded_tokens == 18
    # row 0: c (6) + b (3); row 1: a (5) + 4 pad
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2]
    assert batch.position_ids[1].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    # the first token of a packed sample is never a target of the sample before it
    assert batch.labels[0, 6].item() == IGNORE_INDEX
    assert (batch.labels[1, 5:] == IGNORE_INDEX).all()


def test_padded_batch_masks_padding() -> None:
    batch = collate([sample(3), sample(5)], pad_id=0, pack_length=None)
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.real_tokens == 8 and batch.padded_tokens == 10


def test_epoch_order_is_a_seeded_permutation_that_changes_per_epoch() -> None:
    first = epoch_order(20, seed=1, epoch=0)
    assert sorted(first) == list(range(20))
    assert first == epoch_order(20, seed=1, epoch=0)
    assert first != epoch_order(20, seed=1, epoch=1)
    batches = list(micro_batches([sample(2, i) for i in range(10)], 4, seed=1, epoch=0))
    assert [len(b) for b in batches] == [4, 4, 2]


def test_targets_count_shifted_labels() -> None:
    batch = collate([sample(4)], pad_id=0, pack_length=None)
    assert batch.targets == int((batch.labels[:, 1:] != IGNORE_INDEX).sum()) == 2
    assert torch.equal(batch.input_ids, torch.tensor([[1, 2, 3, 4]]))


def test_forward_batches_respect_the_token_budget_and_keep_every_sample() -> None:
    samples = [sample(n, 10 * n) for n in (30, 5, 12, 28, 7, 19, 3)]
    for pack_length in (32, None):
        passes = forward_batches(samples, pad_id=0, pack_length=pack_length, token_budget=64)
        assert all(b.padded_tokens <= 64 for b in passes)
        assert sum(b.real_tokens for b in passes) == sum(len(s.input_ids) for s in samples)
        kept = sorted(t for b in passes for t in b.input_ids.flatten().tolist() if t)
        assert kept == sorted(t for s in samples for t in s.input_ids)
    assert len(forward_batches(samples, 0, 32, token_budget=10_000)) == 1


def test_segmented_passes_are_unpadded_rows_that_say_where_each_sample_starts() -> None:
    samples = [sample(n, 10 * n) for n in (30, 5, 12, 28, 7, 19, 3)]
    passes = forward_batches(samples, pad_id=0, pack_length=32, token_budget=64, segmented=True)
    assert [tuple(b.input_ids.shape) for b in passes] == [(1, 52), (1, 52)]  # 104 evened out
    assert all(b.real_tokens == b.padded_tokens and b.attention_mask is None for b in passes)
    kept = sorted(t for b in passes for t in b.input_ids.flatten().tolist())
    assert kept == sorted(t for s in samples for t in s.input_ids)
    first = passes[0]  # longest first, each to the shorter row: 30 + 12 + 7 + 3
    assert first.cu_seq_lens.tolist() == [0, 30, 42, 49, 52]
    assert first.cu_seq_lens.dtype == torch.int32
    assert first.position_ids[0, 28:33].tolist() == [28, 29, 0, 1, 2]
    # the first token of each sample is never a target of the sample before it
    assert first.labels[0, [30, 42, 49]].tolist() == [IGNORE_INDEX] * 3
    kwargs = first.attention_kwargs
    assert kwargs["cu_seq_lens_q"] is kwargs["cu_seq_lens_k"] is first.cu_seq_lens
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == 30
    assert collate(samples[:2], 0, pack_length=None).attention_kwargs == {}


def test_a_sample_longer_than_the_budget_gets_a_row_of_its_own() -> None:
    passes = forward_batches([sample(80), sample(4)], 0, 128, token_budget=64, segmented=True)
    assert [b.cu_seq_lens.tolist() for b in passes] == [[0, 80], [0, 4]]
