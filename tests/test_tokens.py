import numpy as np
import pytest

from mailsift.parse import parse
from mailsift.tokens import _TEXT_CLASS, FeatureSettings, _spans, extract
from mailsift.train import PROFILES


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_features_are_sorted_unique_in_range_and_unit_length(profile, message_bytes):
    settings = PROFILES[profile].features
    f = extract(parse(message_bytes()), settings)
    assert len(f.indices) > 20
    assert np.all(np.diff(f.indices.astype(np.int64)) > 0)
    assert f.indices.max() < 2**settings.n_bits
    assert abs(float(np.dot(f.values, f.values)) - 1.0) < 1e-5


def test_a_word_hashes_the_same_wherever_it_stands():
    settings = FeatureSettings()
    a = extract(parse(b"Subject: x\n\nviagra"), settings)
    b = extract(parse(b"Subject: x\n\nsome other words before viagra"), settings)
    names_a = a.names(a.indices)
    word_slots = [s for s, n in names_a.items() if "viagra" in n and "4c" not in n]
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
    for expected in ("cheap", "pair:cheap meds", "4g:", "raw:", "from-domain:example.org", "subj:meeting"):
        assert expected in names


def test_settings_round_trip_and_reject_unknown_keys():
    s = PROFILES["full"].features
    assert FeatureSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="unknown feature settings"):
        FeatureSettings.from_dict({**s.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="n_bits"):
        FeatureSettings.from_dict({**s.to_dict(), "n_bits": 40})


def test_received_ip_tokens_when_enabled(message_bytes):
    raw = (
        b"Received: from mx.example.net (mx.example.net [81.2.69.160]) by in.example.org\n" + message_bytes()
    )
    on = extract(parse(raw), FeatureSettings(received_tokens=True))
    off = extract(parse(raw), FeatureSettings())
    assert "received-ip:81.2.69.0/24" in " ".join(on.names(on.indices).values())
    assert "received-ip:" not in " ".join(off.names(off.indices).values())
