"""User names (usernames.py): any mailbox or login name is accepted, ASCII
letters alone fold, and the store key is injective, safe as a file name and
a Redis key, and unchanged for the plain names keyed before."""

from __future__ import annotations

import random
import re

import pytest

from mailsift.usernames import MAX_KEY, UserNameError, canonical, fold, key, name_of

#: names a mail system may use, each a different user
REAL = [
    "o'brien", "a&b", "first.last", "first/last", "_alice", "DOMAIN\\alice", "alice+tag", "jörg",
    "user@domain", "alice@example.org", "a b", "{alice}", "a:b", "../etc", ".hidden", "-x", "100%",
    "\u212aate", "kate", "jo\u0308rg", "j%c3%b6rg", "o%27brien", "o%2527brien", "first%2flast",
    "domain%5calice", "%2ehidden", "%2dx", "%", "%%", "王", "x" * 254,
]  # fmt: skip
_KEY_RE = re.compile(r"[a-z0-9_@+=%][a-z0-9._@+=%-]*")


def test_plain_names_keep_the_key_they_always_had():
    for name in ("alice", "alice@example.org", "first.last", "bob-smith", "a_b", "x=y", "alice+tag", "1abc"):
        assert key(name) == name


def test_every_mailbox_or_login_name_gets_its_own_safe_key_and_decodes_back():
    keys = [key(n) for n in REAL]
    assert len(set(keys)) == len(REAL)  # no two names share state
    for name, k in zip(REAL, keys):
        assert _KEY_RE.fullmatch(k) and len(k.encode()) <= MAX_KEY, k  # a file name, a Redis key
        assert k not in (".", "..") and "/" not in k and "{" not in k and ":" not in k
        assert name_of(k) == canonical(name)
    assert key("o'brien") == "o%27brien" and key("o%27brien") == "o%2527brien"
    assert key("jörg") == "j%c3%b6rg" and key("j%c3%b6rg") == "j%25c3%25b6rg"
    assert key("../etc") == "%2e.%2fetc" and key("-x") == "%2dx"


def test_the_encoding_is_injective_on_names_built_to_collide():
    rng = random.Random(12)
    alphabet = "a27%.-'/_Kk\u212aé"
    names = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(20000)}
    by_key: dict[str, str] = {}
    for name in names:
        k = key(name)
        assert by_key.setdefault(k, canonical(name)) == canonical(name), (name, by_key[k])
        assert name_of(k) == canonical(name)


def test_only_ascii_letters_fold_the_kelvin_sign_stays_itself():
    assert canonical("Alice@Example.ORG") == "alice@example.org" == canonical("  alice@example.org\t")
    assert canonical("KATE") == "kate"
    assert canonical("\u212aate") == "\u212aate" != canonical("kate")  # str.lower() gives "kate"
    assert key("\u212aate") == "%e2%84%aaate"
    assert canonical("JÖRG") == "jÖrg" != canonical("jörg")  # no Unicode case folding
    assert canonical("jo\u0308rg") != canonical("jörg")  # no normalisation either (NFC would fold K too)
    assert fold("ÀB\u212a") == "Àb\u212a"


@pytest.mark.parametrize(
    "name, words",
    [
        ("", "empty"),
        (" \t ", "empty"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        ("a\rb", "control character"),
        ("a\x7fb", "control character"),
        ("a\x85b", "control character"),
        ("a\u2028b", "control character"),
        ("a\udcffb", "not UTF-8"),
        ("x" * 255, "at most 254"),
        ("é" * 60, "too long once encoded"),
    ],
)
def test_names_that_cannot_be_names_are_refused_saying_why(name, words):
    with pytest.raises(UserNameError, match=words):
        key(name)


@pytest.mark.parametrize("stored", ["o%2", "o%zz", "O'b", "a b", "%c3", "%61"])
def test_strings_that_are_no_key_do_not_decode(stored):
    with pytest.raises(UserNameError):
        name_of(stored)


def test_no_user_name_reaches_the_sites_own_state():
    """The site's learns in a shared store sit under a reserved name and key;
    a user called ``%site`` (a name this module accepts) is just a user."""
    from mailsift.store import SITE, SITE_KEY, StoreError, state_name, store_key, user_name

    assert store_key(SITE) == SITE_KEY
    for name in ("%site", "%SITE", " %site", "\u0000site"[1:]):
        assert state_name(name) != SITE and store_key(name) != SITE_KEY
    with pytest.raises(StoreError):
        user_name(SITE)  # the reserved name holds a control character: no door can send it


def test_a_library_caller_cannot_score_or_learn_as_the_site_by_naming_it(tmp_path, small_model):
    """Filter.score/learn_user with the reserved name: refused, never the site's state."""
    from mailsift.config import load_config
    from mailsift.filter import Filter
    from mailsift.store import SITE, StoreError

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path}/users"\n')
    flt = Filter(load_config(str(cfg)), str(small_model))
    raw = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello there\r\n"
    site = flt.score(raw)
    named = flt.score(raw, user=SITE)
    assert named.score == site.score and any(h.name == "USER_STATE_ERROR" for h in named.hits)
    with pytest.raises(StoreError):
        flt.learn_user(raw, True, SITE)
