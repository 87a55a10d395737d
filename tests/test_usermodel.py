"""Per-user models on the local store: a new user is the site model exactly,
a user's learn moves that user only, unlearn is exact, learns commute, and
two processes learning at once lose nothing (flock)."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace

import numpy as np
import pytest
from conftest import SA

from mailsift import Filter
from mailsift.cli import main
from mailsift.config import Config, ConfigError, load_config
from mailsift.corpus import read_index
from mailsift.store import StoreError
from mailsift.store.local import LocalStore
from mailsift.usermodel import Entry, UnitVec, UserParams, adjustment, plan
from mailsift.users import Users


@pytest.fixture(scope="module")
def mail():
    items = read_index(SA / "test.index")
    ham = [i.path.read_bytes() for i in items if not i.spam][:12]
    spam = [i.path.read_bytes() for i in items if i.spam][:12]
    return ham, spam


def _config(tmp_path) -> Config:
    config = Config()
    config.store = replace(config.store, path=str(tmp_path / "users"))
    return config


@pytest.fixture
def flt(tmp_path):
    return Filter(_config(tmp_path))


def test_a_new_user_scores_exactly_as_the_site_model(flt, mail):
    for raw in mail[0][:3] + mail[1][:3]:
        site, user = flt.score(raw), flt.score(raw, user="carol")
        assert user.log_odds == site.log_odds and user.score == site.score
        assert user.user == "carol" and user.user_log_odds == 0.0


def test_a_users_learn_moves_that_user_and_nobody_else(flt, mail):
    ham = mail[0][0]
    site = flt.score(ham).log_odds
    bob_before = flt.score(ham, user="bob")
    assert flt.learn_user(ham, True, "alice") == "learned"
    alice = flt.score(ham, user="alice")
    assert alice.log_odds > site + 1.0 and alice.user_spam == 1
    bob = flt.score(ham, user="bob")
    assert bob.log_odds == bob_before.log_odds and bob.score == bob_before.score
    assert flt.score(ham).log_odds == site  # the site model did not move either


def test_learning_again_is_already_learned_relabel_and_unlearn_are_exact(flt, mail):
    ham, other = mail[0][0], mail[0][1]
    site = flt.score(ham).log_odds
    assert flt.learn_user(other, True, "alice") == "learned"
    with_other = flt.score(ham, user="alice").log_odds
    assert flt.learn_user(ham, True, "alice") == "learned"
    learned = flt.score(ham, user="alice").log_odds
    assert flt.learn_user(ham, True, "alice") == "already-learned"
    assert flt.score(ham, user="alice").log_odds == learned
    assert flt.learn_user(ham, False, "alice") == "relabelled"
    assert flt.score(ham, user="alice").log_odds < with_other
    assert flt.learn_user(ham, True, "alice", forget=True) == "other-class"
    assert flt.learn_user(ham, None, "alice", forget=True) == "unlearned"
    assert flt.score(ham, user="alice").log_odds == pytest.approx(with_other, abs=1e-12)
    assert flt.learn_user(ham, None, "alice", forget=True) == "not-learned"
    assert flt.learn_user(other, True, "alice", forget=True) == "unlearned"
    back = flt.score(ham, user="alice")
    assert back.log_odds == site and back.user_spam == back.user_ham == 0  # every slot deleted: exact


def test_learns_commute_so_their_order_does_not_matter(mail):
    """The sums only add: learning a, b, c in any order gives the same
    state up to float rounding (what lets two nodes learn at once)."""
    flt = Filter(Config())
    msgs = [mail[1][0], mail[0][2], mail[1][3]]
    vecs = [UnitVec.of(flt.features(m)[1].vec) for m in msgs]
    site = [flt.site_log_odds(flt.features(m)[1]) for m in msgs]

    def run_concurrent(order):
        state: dict[int, list[float]] = {}
        changes = []
        for k in range(3):
            x = vecs[k]
            zeros = np.zeros(len(x.slots))
            changes.append(
                plan(UserParams(), x, site[k], zeros, zeros, bytes([k]) * 16, None, k != 1, False)[1]
            )
        for k in order:
            for i, ds, da in zip(changes[k].slots.tolist(), changes[k].ds, changes[k].da):
                cur = state.setdefault(i, [0.0, 0.0])
                cur[0] += ds
                cur[1] += da
        return state

    a, b = run_concurrent([0, 1, 2]), run_concurrent([2, 0, 1])
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-15)


def test_one_click_moves_the_message_by_about_rate_times_the_gradient():
    """A fresh message learned against a site model that got it completely
    wrong moves by rate * g / sqrt(eps + g^2) = 0.71 * rate log-odds."""
    rng = np.random.default_rng(0)
    slots = np.unique(rng.integers(0, 1 << 22, 500)).astype(np.uint32)
    x = UnitVec.of((slots, np.ones(len(slots), dtype=np.float32)))
    zeros = np.zeros(len(slots))
    _, change = plan(UserParams(rate=4.0), x, -40.0, zeros, zeros, b"d" * 16, None, True, False)
    moved = adjustment(UserParams(rate=4.0), x, change.ds, change.da)
    assert moved == pytest.approx(4.0 / np.sqrt(2.0), rel=1e-6)


def _learn_in_process(args):
    path, raws, user = args
    config = Config()
    config.store = replace(config.store, path=path)
    flt = Filter(config)
    return [flt.learn_user(raw, True, user) for raw in raws]


def test_two_processes_learning_at_once_lose_no_update(tmp_path, mail):
    path = str(tmp_path / "users")
    halves = [mail[1][:6], mail[1][6:12]]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_learn_in_process, [(path, h, "alice") for h in halves])
    assert results == [["learned"] * 6, ["learned"] * 6]
    config = Config()
    config.store = replace(config.store, path=path)
    flt = Filter(config)
    assert flt.score(mail[1][0], user="alice").user_spam == 12
    # every one is in the ledger: learning any again is already-learned
    assert {flt.learn_user(raw, True, "alice") for raw in mail[1][:12]} == {"already-learned"}


def test_unusable_user_names_are_refused_and_corrupt_state_scores_with_the_site_model(tmp_path, mail):
    flt = Filter(_config(tmp_path))
    for bad in ("", " ", "a\x00b", "a\nb", "a\x7fb", "x" * 255, "é" * 60):
        with pytest.raises(StoreError):
            flt.learn_user(mail[0][0], True, bad)
    assert not (tmp_path / "users").exists() or not any((tmp_path / "users").iterdir())
    v = flt.score(mail[0][0], user="a\x00b")  # scoring never fails over a name: the site model
    assert v.log_odds == flt.score(mail[0][0]).log_odds
    assert any(h.name == "USER_STATE_ERROR" and "control character" in h.detail for h in v.hits)
    assert flt.learn_user(mail[0][0], True, "Alice@Example.org") == "learned"
    assert flt.learn_user(mail[0][0], True, "alice@example.org") == "already-learned"
    state = next((tmp_path / "users" / "alice@example.org").glob("*.npz"))
    state.write_bytes(b"not a zip file")
    v = flt.score(mail[0][0], user="alice@example.org")
    assert v.log_odds == flt.score(mail[0][0]).log_odds
    assert any(h.name == "USER_STATE_ERROR" and h.score == 0 for h in v.hits)
    with pytest.raises(StoreError, match="corrupt user state"):
        LocalStore(tmp_path / "users").read("alice@example.org", state.stem, np.zeros(0, np.uint32))


def test_cli_learn_and_score_with_user(tmp_path, mail, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path / "users"}"\n')
    msg = tmp_path / "m.eml"
    msg.write_bytes(mail[0][0])
    assert main(["score", "--config", str(cfg), "--json", "--user", "alice", str(msg)]) == 0
    assert main(["learn", "--config", str(cfg), "--spam", "--user", "alice", str(msg)]) == 0
    assert main(["learn", "--config", str(cfg), "--spam", "--user", "alice", str(msg)]) == 0
    assert main(["unlearn", "--config", str(cfg), "--ham", "--user", "alice", str(msg)]) == 65
    out = capsys.readouterr().out
    assert "learned as spam for alice" in out and "already learned as spam for alice" in out
    users = Users.open(load_config(str(cfg)))
    flt = Filter(load_config(str(cfg)), users=users)
    assert flt.score(mail[0][0], user="alice").user_log_odds > 1.0
    capsys.readouterr()
    assert main(["score", "--config", str(cfg), "--user", "a\x01b", str(msg)]) == 0  # the site model
    assert "warning: --user: user name 'a\\x01b' holds a control character" in capsys.readouterr().err
    for bad in ("", "a\nb"):
        assert main(["learn", "--config", str(cfg), "--spam", "--user", bad, str(msg)]) == 64
    assert not (tmp_path / "users" / "%2e%2e").exists()


def test_every_mailbox_or_login_name_has_its_own_state_in_a_folder_of_its_own(tmp_path, mail):
    flt = Filter(_config(tmp_path))
    ham = mail[0][0]
    site = flt.score(ham).log_odds
    names = ["o'brien", "a&b", "first.last", "first/last", "_alice", "DOMAIN\\alice", "alice+tag", "jörg",
             "user@domain", "../etc", "\u212aate", "o%27brien"]  # fmt: skip
    for i, name in enumerate(names):
        assert flt.learn_user(ham, True, name) == "learned", name
        for other in names[i + 1 :] + ["obrien", "kate", "jorg", "last", "etc"]:
            assert flt.score(ham, user=other).log_odds == site, (name, other)  # nobody else moved
        assert flt.score(ham, user=name).user_spam == 1
    folders = sorted(p.name for p in (tmp_path / "users").iterdir())
    assert len(folders) == len(names) and "first.last" in folders and "user@domain" in folders
    assert "o%27brien" in folders and "o%2527brien" in folders and "%e2%84%aaate" in folders
    assert not (tmp_path / "etc").exists() and all((tmp_path / "users" / f).is_dir() for f in folders)
    # one user, any ASCII case; but the Kelvin sign is not k
    assert flt.learn_user(ham, True, "O'Brien") == "already-learned"
    assert flt.learn_user(ham, True, "\u212aATE") == "already-learned"
    assert flt.score(ham, user="KATE").log_odds == site


@pytest.mark.parametrize(
    "text, words",
    [
        ("[store]\ntimeout = 0.5\n", "store.timeout must be between"),
        ('[store]\nurl = "http://127.0.0.1:6379"\n', "store.url must be"),
        ('[store]\nprefix = "a{b}"\n', "store.prefix"),
        ("[store]\nqueue_max = 0\n", "store.queue_max"),
    ],
)
def test_bad_store_config_is_refused(tmp_path, text, words):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_config(str(cfg))


def test_smtp_doors_score_with_the_recipients_model_only_when_there_is_exactly_one():
    from mailsift.users import user_for_recipients

    assert user_for_recipients(["<Alice@Example.org>"]) == "alice@example.org"
    assert user_for_recipients(["alice@example.org", "ALICE@example.org"]) == "alice@example.org"
    assert user_for_recipients(["alice@example.org", "bob@example.org"]) is None
    assert user_for_recipients([]) is None and user_for_recipients(["<>"]) is None
    assert user_for_recipients(["a\x01b@example.org"]) is None  # not a user name: the site model
    assert user_for_recipients(["<o'brien@Example.org>"]) == "o'brien@example.org"
    assert user_for_recipients(['<"o\'brien"@example.org>', "o'brien@example.org"]) == "o'brien@example.org"
    assert user_for_recipients(['<"a\\"b"@example.org>']) == 'a"b@example.org'
    assert (
        user_for_recipients(['"a b"@example.org'])
        == "a b@example.org"
        != user_for_recipients(["b@example.org"])
    )
    kelvin = user_for_recipients(["\u212aate@example.org"])
    assert kelvin == "\u212aate@example.org" != user_for_recipients(["Kate@example.org"])
    assert user_for_recipients(["\u212aate@example.org", "kate@example.org"]) is None  # two users


def test_ledger_entries_keep_the_click_time_and_entries_without_one_still_read(tmp_path, mail):
    """Entries written before clicks had a time (Redis's "1 g", a local file
    without ``ledger_at``) read as time 0 and are written back as they were,
    so the compare-and-set still matches them; new entries keep the time."""
    assert Entry.decode("1 0.25") == Entry(True, 0.25, 0.0)
    assert Entry.decode(b"1 0.25").encode() == "1 0.25"
    new = Entry(False, -0.5, 1764745796.123456)
    assert Entry.decode(new.encode()) == new
    flt = Filter(_config(tmp_path))
    ham = mail[0][0]
    assert flt.learn_user(ham, True, "alice") == "learned"
    state = next((tmp_path / "users" / "alice").glob("*.npz"))
    with np.load(state) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert arrays["ledger_at"][0] > 1.7e9  # the click's time.time()
    del arrays["ledger_at"]  # as written before click times were kept
    np.savez(state, **arrays)
    flt = Filter(_config(tmp_path))
    assert flt.learn_user(ham, True, "alice") == "already-learned"
    assert flt.learn_user(ham, False, "alice") == "relabelled"  # the old entry matched: CAS passed
    assert flt.score(ham, user="alice").user_ham == 1
