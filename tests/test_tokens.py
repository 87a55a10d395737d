import numpy as np
import pytest

from mailsift.parse import parse
from mailsift.tokens import _TEXT_CLASS, FeatureSettings, _spans, extract, extract_bytes
from mailsift.train import PROFILES


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_features_are_sorted_unique_in_range_and_scaled_as_their_scheme_says(profile, message_bytes):
    settings = PROFILES[profile].features
    f = extract(parse(message_bytes()), settings)
    assert len(f.indices) > 20
    assert np.all(np.diff(f.indices.astype(np.int64)) > 0)
    assert f.indices.max() < 2**settings.n_bits
    if settings.scheme == "raw":
        assert np.all(f.values == 1.0)  # binary, not L2-normalised: measured better on trec07p-dev
    else:  # portable-text: the v1 scheme the shipped default was trained with, unit length
        assert abs(float(np.dot(f.values, f.values)) - 1.0) < 1e-5


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_extract_from_bytes_equals_extract_from_the_parsed_message(profile, message_bytes):
    settings = PROFILES[profile].features
    raw = message_bytes()
    assert np.array_equal(extract_bytes(raw, settings).indices, extract(parse(raw), settings).indices)


@pytest.mark.parametrize(
    "header",
    [
        b"X-Spam-Flag: NO\n",
        b"X-Spam-Status: No, score=-2.0 required=5.0\n\ttests=BAYES_00\n",
        b"x-mailsift-report: ham\nX-Rspamd-Score: -3\nX-Bogosity: Ham, tests=bogofilter\n",
        b"X-DSPAM-Result: Innocent\nX-Virus-Scanned: clean\n",
    ],
)
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_filter_verdict_headers_never_reach_the_features(profile, header, message_bytes):
    """A forged 'X-Spam-Flag: NO' must not buy a clean score, and a model
    trained on delivered mail must not learn its own verdicts: in every
    profile (portable-text tokenises header names and words too)."""
    settings = PROFILES[profile].features
    raw = message_bytes()
    assert np.array_equal(extract_bytes(header + raw, settings).indices, extract_bytes(raw, settings).indices)
    crlf = raw.replace(b"\n", b"\r\n")
    assert np.array_equal(
        extract_bytes(header.replace(b"\n", b"\r\n") + crlf, settings).indices,
        extract_bytes(crlf, settings).indices,
    )


def test_the_same_words_in_the_body_still_count(message_bytes):
    settings = PROFILES["full"].features
    plain = extract_bytes(message_bytes(body="hello"), settings)
    quoted = extract_bytes(message_bytes(body="hello\nX-Spam-Flag: NO"), settings)
    assert len(set(quoted.indices.tolist()) - set(plain.indices.tolist())) > 5


def test_features_read_only_the_first_ngram_bytes():
    settings = FeatureSettings(ngram_bytes=200)
    head = b"Subject: s\n\n" + b"a" * 300
    assert np.array_equal(
        extract_bytes(head + b" different tail", settings).indices, extract_bytes(head, settings).indices
    )


def test_tiny_and_empty_messages_give_few_features_without_error():
    settings = FeatureSettings()
    assert len(extract_bytes(b"", settings).indices) == 0
    assert len(extract_bytes(b"ab", settings).indices) == 1  # one raw token, no 4-gram
    assert len(extract_bytes(b"\x00" * 10_000, settings).indices) == 1


def test_a_word_hashes_the_same_wherever_it_stands():
    settings = FeatureSettings()
    a = extract(parse(b"Subject: x\n\nviagra"), settings)
    b = extract(parse(b"Subject: x\n\nsome other words before viagra"), settings)
    names_a = a.names(a.indices)
    word_slots = [s for s, n in names_a.items() if "raw:viagra" in n.split(" | ")]
    assert word_slots and set(word_slots) <= set(b.indices.tolist())


def test_text_tokens_keep_inner_punctuation_and_symbol_runs():
    data = "hello world!!! it's e-mail: a.b@c.de -x- $100 café".encode()
    starts, ends, _ = _spans(data, _TEXT_CLASS)
    assert [data[s:e].decode() for s, e in zip(starts, ends)] == [
        "hello", "world", "!!!", "it's", "e-mail", "a.b@c.de", "x", "$", "100", "café",
    ]  # fmt: skip


def test_portable_profile_ignores_receiver_side_headers(message_bytes):
    settings = PROFILES["portable"].features
    plain = message_bytes()
    relayed = (
        b"Received: from mx.example.net (mx.example.net [198.51.100.7]) by inbound.example.org\n"
        b"Delivered-To: someone@inbound.example.org\nX-Spam-Status: Yes, score=99\n"
        b"List-Id: <spam.lists.example.org>\n" + plain
    )
    assert np.array_equal(extract(parse(plain), settings).indices, extract(parse(relayed), settings).indices)
    full = PROFILES["full"].features
    assert not np.array_equal(extract(parse(plain), full).indices, extract(parse(relayed), full).indices)


def test_mbox_from_line_does_not_change_features(message_bytes):
    settings = PROFILES["full"].features
    raw = message_bytes()
    with_from = b"From alice@example.org Mon Jul  1 10:00:00 2024\n" + raw
    assert np.array_equal(extract(parse(raw), settings).indices, extract(parse(with_from), settings).indices)


def test_evidence_names_are_readable(message_bytes):
    f = extract(parse(message_bytes(body="Click here for cheap meds now")), PROFILES["full"].features)
    names = " ".join(f.names(f.indices).values())
    for expected in ('4g:"chea"', "raw:cheap", "rawpair:cheap meds", "raw:Subject:"):
        assert expected in names
    v1 = extract(parse(message_bytes(body="Click here for cheap meds now")), FeatureSettings(scheme="v1"))
    names = " ".join(v1.names(v1.indices).values())
    for expected in ("cheap", "pair:cheap meds", "from-domain:example.org", "subj:meeting"):
        assert expected in names


def test_settings_round_trip_and_reject_unknown_keys():
    s = PROFILES["full"].features
    assert FeatureSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="unknown feature settings"):
        FeatureSettings.from_dict({**s.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="n_bits"):
        FeatureSettings.from_dict({**s.to_dict(), "n_bits": 40})
    with pytest.raises(ValueError, match="scheme"):
        FeatureSettings.from_dict({**s.to_dict(), "scheme": "bogus"})


def test_received_ip_tokens_when_enabled(message_bytes):
    raw = (
        b"Received: from mx.example.net (mx.example.net [81.2.69.160]) by in.example.org\n" + message_bytes()
    )
    on = extract(parse(raw), FeatureSettings(scheme="v1", received_tokens=True))
    off = extract(parse(raw), FeatureSettings(scheme="v1"))
    assert "received-ip:81.2.69.0/24" in " ".join(on.names(on.indices).values())
    assert "received-ip:" not in " ".join(off.names(off.indices).values())
