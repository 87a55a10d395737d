"""Filters' verdict headers never reach the features: mailsift's own
(X-Spam-*, X-Mailsift-Report, as ``mailsift serve`` delivers mail) and other
filters' (SpamAssassin, Rspamd, DSPAM, bogofilter, amavisd, ...), whether
they are real or forged by a spammer."""

from __future__ import annotations

import numpy as np
import pytest

from mailsift.config import Config
from mailsift.filter import Filter
from mailsift.report import add_headers, spam_headers, strip_verdict_headers
from mailsift.train import PROFILES, collect, labelled_stream, message_digest

CLEAN = (
    b"From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: meeting\n"
    b"X-Mailer: Thunderbird\nAuthentication-Results: mx.example.net; spf=pass\n"
    b"\nSee you tomorrow.\nX-Spam-Flag: YES (a body line, not a header)\n"
)

#: verdict headers as real filters write them (names and value shapes)
OTHER_FILTERS = (
    b"X-Spam-Checker-Version: SpamAssassin 3.4.6 (2021-04-09) on mx.example.net\n"
    b"X-Spam-Level: ***\n"
    b"X-Spam-Status: No, score=3.1 required=5.0 tests=BAYES_50,\n\tHTML_MESSAGE autolearn=no\n"
    b"X-Spam-Report: \n\t*  0.8 BAYES_50 BODY: Bayes spam probability is 40 to 60%\n"
    b"X-Spamd-Result: default: False [1.20 / 15.00];\nX-Spamd-Bar: +\n"
    b"X-Rspamd-Queue-Id: 4F1C2A\nX-Rspamd-Server: mx1\nX-Rspamd-Action: no action\n"
    b"X-Bogosity: Ham, tests=bogofilter, spamicity=0.000001\n"
    b"X-DSPAM-Result: Innocent\nX-DSPAM-Confidence: 0.99\n"
    b"X-Virus-Scanned: amavisd-new at example.net\nX-Virus-Status: Clean\n"
    b"X-Amavis-Alert: BAD HEADER\nX-Quarantine-ID: <abc>\n"
    b"X-CRM114-Status: Good  ( 12.3 )\n"
    b"X-Microsoft-Antispam: BCL:0;\nX-Forefront-Antispam-Report: CIP:1.2.3.4;SFV:NSPM\n"
    b"X-MS-Exchange-Organization-SCL: -1\nX-Barracuda-Spam-Score: 0.00\n"
    b"X-Barracuda-Bayes: INNOCENT GLOBAL 0.0 1.0 -2.0\nX-Proofpoint-Spam-Details: rule=notspam\n"
    b"X-SpamExperts-Class: ham\nX-ASF-Spam-Status: No, hits=-0.0\nX-Policyd-Weight: rate: -7.6\n"
    b"X-MailScanner: Found to be clean\nX-Old-Spam-Status: No\nX-Mailsift-Report: p=0.01\n"
)


def _with(headers: bytes, msg: bytes = CLEAN) -> bytes:
    """``headers`` inserted after the message's first header line."""
    first, rest = msg.split(b"\n", 1)
    return first + b"\n" + headers + rest


def test_strip_removes_every_filters_verdict_and_keeps_the_rest_byte_for_byte():
    assert strip_verdict_headers(_with(OTHER_FILTERS)) == CLEAN


def test_strip_returns_a_message_without_verdicts_as_the_same_object():
    assert strip_verdict_headers(CLEAN) is CLEAN
    crlf = CLEAN.replace(b"\n", b"\r\n")
    assert strip_verdict_headers(crlf) is crlf


def test_strip_handles_crlf_folded_lines_and_keeps_the_body_line_alike():
    crlf = _with(OTHER_FILTERS).replace(b"\n", b"\r\n")
    assert strip_verdict_headers(crlf) == CLEAN.replace(b"\n", b"\r\n")


def test_strip_handles_a_header_block_with_no_body_and_an_mbox_from_line():
    raw = b"From alice@example.org Mon Jul  1 10:00:00 2024\nSubject: x\nX-Spam-Flag: NO\n\tcontinued"
    assert strip_verdict_headers(raw) == b"From alice@example.org Mon Jul  1 10:00:00 2024\nSubject: x\n"
    assert strip_verdict_headers(b"X-Spam-Flag: NO") == b""


def test_strip_stops_where_the_header_block_ends_without_a_blank_line():
    # the parser reads a line that is not a header field as the start of the body
    raw = b"Subject: x\nthis line starts the body\nX-Spam-Flag: NO\n"
    assert strip_verdict_headers(raw) is raw


def test_strip_is_case_blind_and_allows_blanks_before_the_colon():
    raw = b"x-spam-flag : NO\nX-SPAM-STATUS:No\nSubject: x\n\nbody"
    assert strip_verdict_headers(raw) == b"Subject: x\n\nbody"


def test_strip_keeps_look_alike_headers_that_are_not_verdicts():
    raw = b"X-Spa: 1\nX-Vir: 2\nX-Mailsiftx: 3\nReceived-SPF: pass\nX-Greylist: delayed 10s\n\nb"
    assert strip_verdict_headers(raw) is raw


def test_strip_undoes_what_serve_adds_so_delivered_mail_reads_as_received(sa_test):
    flt = Filter(_offline())
    for item in sa_test[:60] + sa_test[-60:]:
        raw = item.read()
        delivered = add_headers(raw, spam_headers(flt.score(raw, evidence=3)))
        assert delivered != raw
        assert strip_verdict_headers(delivered) == strip_verdict_headers(raw), item.path


def _offline() -> Config:
    config = Config()
    config.dnsbl = []
    config.auth.enabled = False
    return config


def test_a_forged_verdict_header_does_not_change_the_score(sa_test):
    flt = Filter(_offline())
    spam = [i for i in sa_test if i.spam][:40]
    for item in spam:
        raw = item.read()
        forged = _with(b"X-Spam-Flag: NO\nX-Spam-Status: No, score=-5.0 required=5.0\n", raw)
        assert flt.score(forged, evidence=0).score == flt.score(raw, evidence=0).score, item.path


def test_digest_is_the_same_for_a_message_delivered_by_serve_and_raw(sa_test):
    flt = Filter(_offline())
    raw = sa_test[0].read()
    delivered = add_headers(raw, spam_headers(flt.score(raw, evidence=3)))
    assert message_digest(delivered) == message_digest(raw)


def test_training_on_delivered_mail_sees_the_same_features_as_on_clean_mail(tmp_path, sa_train):
    """The headers ``serve`` adds vanish before feature extraction, so a model
    retrained from the Maildir mailsift delivered is the model of clean mail
    (the accuracy of both is measured in benchmarks/verdict_headers.py)."""
    flt = Filter(_offline())
    items = [i for i in sa_train if not i.spam][:40] + [i for i in sa_train if i.spam][:40]
    ham_dir, spam_dir = tmp_path / "ham", tmp_path / "spam"
    ham_dir.mkdir()
    spam_dir.mkdir()
    for n, item in enumerate(items):
        raw = item.read()
        delivered = add_headers(raw, spam_headers(flt.score(raw, evidence=3)))
        (spam_dir if item.spam else ham_dir).joinpath(f"{n}.eml").write_bytes(delivered)
    settings = PROFILES["full"].features
    delivered_ts = collect(labelled_stream([ham_dir], [spam_dir]), settings, show_progress=False)
    clean_ts = collect(labelled_stream(index=items), settings, show_progress=False)
    assert delivered_ts.n_ham == clean_ts.n_ham == 40 and delivered_ts.n_spam == clean_ts.n_spam == 40
    clean = {d: v for d, v in zip(clean_ts.digests, clean_ts.X)}
    assert set(delivered_ts.digests) == set(clean)
    for digest, vec in zip(delivered_ts.digests, delivered_ts.X):
        np.testing.assert_array_equal(vec[0], clean[digest][0])
        np.testing.assert_array_equal(vec[1], clean[digest][1])


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_strip_is_linear_on_header_names_built_to_backtrack(eol):
    # a name of "spam" repeated with no colon would be quadratic for a naive
    # regex; here it only has to return (time is measured in benchmarks/)
    long_name = b"X-" + b"spam" * 50_000
    raw = b"Subject: x" + eol + long_name + b": v" + eol + b"X-Spam-Flag: NO" + eol + eol + b"body"
    assert strip_verdict_headers(raw) == b"Subject: x" + eol + eol + b"body"
    # without its colon the line is not a header: the header block ends there
    raw = b"Subject: x" + eol + long_name + eol + b"X-Spam-Flag: NO" + eol + eol + b"body"
    assert strip_verdict_headers(raw) is raw
