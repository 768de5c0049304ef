"""The resumable, rank-aware data order used for training."""

from specdec.train.callbacks import StepBatchSampler


def test_resumed_iteration_is_the_tail_of_the_uninterrupted_one():
    full = list(StepBatchSampler(10, 3, num_batches=9, seed=4))
    resumed = list(StepBatchSampler(10, 3, num_batches=9, seed=4, position=lambda: (5, 0, 1)))
    assert resumed == full[5:] and len(StepBatchSampler(10, 3, 9, 4, lambda: (5, 0, 1))) == 4


def test_every_epoch_is_a_permutation_and_seeds_differ():
    stream = [i for batch in StepBatchSampler(10, 5, num_batches=4, seed=1) for i in batch]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]
    assert stream != [i for batch in StepBatchSampler(10, 5, num_batches=4, seed=2) for i in batch]


def test_two_ranks_split_the_single_process_stream():
    single = list(StepBatchSampler(12, 2, num_batches=8, seed=0))
    rank0 = list(StepBatchSampler(12, 2, num_batches=4, seed=0, position=lambda: (0, 0, 2)))
    rank1 = list(StepBatchSampler(12, 2, num_batches=4, seed=0, position=lambda: (0, 1, 2)))
    assert rank0 == single[0::2] and rank1 == single[1::2]
