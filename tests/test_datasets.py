import pytest

from mailsift.corpus import CorpusError, read_index
from mailsift.datasets import build_index, split, write_index


def _mail(n: int, day: int, body: str | None = None) -> bytes:
    return (
        f"From: a{n}@example.org\nSubject: m{n}\nDate: {day:02d} Jan 2024 10:00:00 +0000\n\n"
        f"{body or f'body {n}'}\n"
    ).encode()


@pytest.fixture
def corpus(tmp_path):
    for folder, spam in (("ham", False), ("spam", True)):
        (tmp_path / folder).mkdir()
        for n in range(10):
            (tmp_path / folder / f"{n:02d}.eml").write_bytes(_mail(n + 100 * spam, day=n + 1))
    return tmp_path


def test_index_from_globs_round_trips_through_read_index(corpus):
    items = build_index(corpus, ["ham/*"], ["spam/*"])
    out = corpus / "idx" / "full.index"
    out.parent.mkdir()
    write_index(items, out)
    back = read_index(out)
    assert [(i.spam, i.path.resolve()) for i in back] == [(i.spam, i.path.resolve()) for i in items]
    assert sum(i.spam for i in back) == 10 and len(back) == 20
    assert out.read_text().startswith("ham ../ham/00.eml")


def test_a_file_matched_as_ham_and_spam_is_refused(corpus):
    with pytest.raises(CorpusError, match="both a ham and a spam"):
        build_index(corpus, ["*/*"], ["spam/*"])


def test_random_split_is_stratified_and_repeatable(corpus):
    items = build_index(corpus, ["ham/*"], ["spam/*"])
    a, b = split(items, ratio=0.3, seed=1), split(items, ratio=0.3, seed=1)
    assert [i.path for i in a.train] == [i.path for i in b.train]
    assert sum(i.spam for i in a.train) == 3 and len(a.train) == 6
    assert [i.path for i in split(items, ratio=0.3, seed=2).train] != [i.path for i in a.train]


def test_date_split_trains_on_the_oldest_and_counts_duplicates(corpus):
    (corpus / "ham" / "09.eml").write_bytes(_mail(0, day=28))  # the same message as 00, resent later
    items = build_index(corpus, ["ham/*"], ["spam/*"])
    s = split(items, ratio=0.5, by_date=True)
    assert sorted(i.path.name for i in s.train if not i.spam) == [
        "00.eml",
        "01.eml",
        "02.eml",
        "03.eml",
        "04.eml",
    ]
    assert s.duplicates == 1 and s.undated == 0
