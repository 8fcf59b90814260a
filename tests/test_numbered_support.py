"""The numbered-blocks check itself: what it accepts as a prefix and what it calls torn."""

from __future__ import annotations

import pytest

from tests.support.numbered import check_prefix


def test_a_whole_prefix_is_counted() -> None:
    assert check_prefix([(512, 0), (512, 1), (512, 2)]) == 3
    assert check_prefix([]) == 0


@pytest.mark.parametrize("runs", [
    [(512, 0), (512, 2)],             # block 1 lost
    [(512, 0), (300, 1)],             # block 1 torn: part of it still zeros
    [(512, 0), (212, 1), (300, 5)],   # block 1 torn by a later write
    [(512, 1)],                       # block 0 lost
])
def test_gaps_and_torn_blocks_are_refused(runs: list[tuple[int, int]]) -> None:
    with pytest.raises(AssertionError):
        check_prefix(runs)
