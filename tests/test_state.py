"""The epoch arithmetic of a run's position (vaecli.runs.state): the shuffling order of each epoch and
the steps an epoch takes."""

import torch

from vaecli.runs.state import epoch_permutation, steps_per_epoch


def test_epoch_permutation_and_steps():
    assert torch.equal(epoch_permutation(10, 1, 2), epoch_permutation(10, 1, 2))
    assert not torch.equal(epoch_permutation(50, 1, 2), epoch_permutation(50, 1, 3))
    assert steps_per_epoch(100, 32) == 4 and steps_per_epoch(97, 32) == 3 and steps_per_epoch(98, 32) == 4
