import pytest

from tasks.clips import cut_clips


@pytest.mark.parametrize(
    ("count", "length", "stride", "expected"),
    [
        (10, 4, 4, [[0, 1, 2, 3], [4, 5, 6, 7]]),
        (7, 4, 2, [[0, 1, 2, 3], [2, 3, 4, 5]]),
        (12, 3, 5, [[0, 1, 2], [5, 6, 7]]),
        (3, 4, 1, []),
        (5, 1, 2, [[0], [2], [4]]),
    ],
)
def test_windows(count, length, stride, expected):
    assert list(cut_clips(range(count), length, stride)) == expected


def test_streams_without_reading_ahead():
    consumed = []

    def frames():
        for index in range(100):
            consumed.append(index)
            yield index

    first = next(cut_clips(frames(), 4, 4))
    assert first == [0, 1, 2, 3] and consumed == [0, 1, 2, 3]
