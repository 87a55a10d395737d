import pytest

from mailsift.corpus import CorpusError, iter_mbox, iter_source, mail_problem, read_index
from mailsift.train import PROFILES, collect


def _msg(n: int) -> bytes:
    return f"From: a{n}@example.org\nSubject: message {n}\n\nbody {n}\n".encode()


def test_maildir_reads_cur_and_new_but_not_tmp_or_dovecot_subfolders(tmp_path):
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp", ".Junk/cur", ".Junk/new"):
        (md / sub).mkdir(parents=True)
    (md / "cur" / "1:2,S").write_bytes(_msg(1))
    (md / "new" / "2").write_bytes(_msg(2))
    (md / "tmp" / "3").write_bytes(_msg(3))
    (md / ".Junk" / "cur" / "4:2,S").write_bytes(_msg(4))
    got = sorted(raw for _, raw in iter_source(md))
    assert got == sorted([_msg(1), _msg(2)])
    junk = [raw for _, raw in iter_source(md / ".Junk")]
    assert junk == [_msg(4)]


def test_mbox_splits_on_from_lines_and_unquotes_mboxrd(tmp_path):
    mbox = tmp_path / "inbox.mbox"
    mbox.write_bytes(
        b"From alice@example.org Mon Jul  1 10:00:00 2024\n"
        b"Subject: one\n\nFirst line\n>From the start, quoted\n>>From deeper\n\n"
        b"From bob@example.org Mon Jul  1 11:00:00 2024\n"
        b"Subject: two\n\nFrom here on, unquoted: not a separator, it has no date\n"
    )
    msgs = [raw for _, raw in iter_mbox(mbox)]
    assert len(msgs) == 2
    assert b"\nFrom the start, quoted\n>From deeper\n" in msgs[0]
    assert msgs[0].endswith(b">From deeper\n")
    assert msgs[1].startswith(b"Subject: two")
    assert msgs[1].endswith(b"it has no date\n")


def test_mbox_is_detected_in_a_folder_and_as_a_file(tmp_path):
    (tmp_path / "box").write_bytes(b"From x@y Mon Jul  1 10:00:00 2024\nSubject: a\n\nA\n")
    (tmp_path / "plain.eml").write_bytes(_msg(9))
    got = sorted(raw for _, raw in iter_source(tmp_path))
    assert got == sorted([b"Subject: a\n\nA\n", _msg(9)])


def test_plain_folder_is_read_recursively_skipping_hidden_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.eml").write_bytes(_msg(1))
    (tmp_path / "2.eml").write_bytes(_msg(2))
    (tmp_path / ".hidden").write_bytes(_msg(3))
    assert sorted(raw for _, raw in iter_source(tmp_path)) == sorted([_msg(1), _msg(2)])


def test_index_paths_are_relative_to_the_index_file(tmp_path):
    (tmp_path / "spam").mkdir()
    (tmp_path / "spam" / "m1").write_bytes(_msg(1))
    (tmp_path / "ham.eml").write_bytes(_msg(2))
    index = tmp_path / "full.index"
    index.write_text("spam spam/m1\n# a comment\n\nham ham.eml\n")
    items = read_index(index)
    assert [(i.spam, i.read()) for i in items] == [(True, _msg(1)), (False, _msg(2))]


def test_index_with_a_bad_line_names_file_and_line(tmp_path):
    index = tmp_path / "bad.index"
    index.write_text("spam a\nmaybe b\n")
    with pytest.raises(CorpusError, match=r"bad.index:2: expected"):
        read_index(index)


def test_missing_sources_give_clear_errors(tmp_path):
    with pytest.raises(CorpusError, match="index file not found"):
        read_index(tmp_path / "nope.index")
    with pytest.raises(CorpusError, match="no such file or folder"):
        list(iter_source(tmp_path / "nope"))


def test_real_index_lists_the_whole_development_corpus(sa_dir):
    items = read_index(sa_dir / "all.index")
    assert len(items) == 6046
    assert sum(i.spam for i in items) == 1896


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: hi\n\nbody",
        b"From alice@example.org Mon Jul  1 10:00:00 2024\nReturn-Path: <a@b>\n\nbody",
        b"Received: from x\r\n\tby y\r\nSubject: crlf\r\n\r\nbody",
        b"X-Only-Header: and no body",
        b"Subject: attachment\n\n\x00\x00\x00\x00 unencoded binary in the body is real spam",
    ],
)
def test_mail_problem_accepts_mail(raw):
    assert mail_problem(raw) is None


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty"),
        (b"\n\n  \r\n", "empty"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", "no header block"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "binary"),
        (b"Dear friend, send money\n", "no header block"),
        (b"From alice@example.org Mon Jul  1 10:00:00 2024\n", "no header block"),
        (b"Subject: x\nX-Junk: \x00\x01\x02\n\nbody", "NUL bytes in the header block"),
    ],
)
def test_mail_problem_names_why_input_is_not_mail(raw, reason):
    assert reason in mail_problem(raw)


def test_collect_skips_non_mail_counting_and_naming_it(message_bytes):
    stream = [
        (False, "good.eml", message_bytes()),
        (True, "pic.png", b"\x89PNG\r\n\x1a\n\x00\x00"),
        (True, "note.txt", b"no header here\n"),
        (True, "empty.eml", b""),
        (False, "gone.eml", CorpusError("gone.eml: cannot read message")),
    ]
    ts = collect(stream, PROFILES["full"].features, show_progress=False)
    assert ts.n_ham == 1 and ts.n_spam == 0
    assert ts.skipped == {"not mail": 2, "empty": 1, "unreadable": 1}
    names = [name for name, _ in ts.skipped_examples]
    assert names == ["pic.png", "note.txt", "empty.eml", "gone.eml"]
    assert "pic.png: binary" in ts.skipped_examples[0][1]
