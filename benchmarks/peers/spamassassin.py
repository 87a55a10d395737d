"""SpamAssassin 4: its release rules plus Bayes trained with ``sa-learn``,
network tests off, scored through its Perl API loaded once (as spamd does,
without the socket), one message at a time on one core (sa_score.pl)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import Corpus, package_version, progress, save

from mailsift.corpus import Labelled

NAME = "SpamAssassin"
NEEDS = {"sa-learn": "spamassassin", "spamassassin": "spamassassin"}
SCRIPT = Path(__file__).with_name("sa_score.pl")
#: the rules the Debian package ships (what sa-update would replace)
RULES = Path("/usr/share/spamassassin")
#: required_score's default
THRESHOLD = 5.0
NOTES = (
    "Debian spamassassin 4.0 with the rules it ships (/usr/share/spamassassin, no sa-update) and the "
    "package's plugin .pre files; Bayes trained with sa-learn on every training message, "
    "bayes_auto_learn 0, bayes_auto_expire 0 (no tokens dropped); network tests off (-L, "
    "skip_rbl_checks, dns_available no, no Razor/Pyzor/DCC), so SA runs with score set 2 "
    "(Bayes, no network); scored in one Perl process with the API loaded once (startup excluded)"
)

LOCAL_CF = """\
use_bayes 1
bayes_auto_learn 0
bayes_auto_expire 0
bayes_path {bayes}/bayes
skip_rbl_checks 1
use_razor2 0
use_pyzor 0
use_dcc 0
dns_available no
use_txrep 0
"""


def _sa_learn(site: Path, bayes: Path, *args: str) -> None:
    cmd = ["sa-learn", f"--siteconfigpath={site}", f"--configpath={RULES}", f"--dbpath={bayes}", "-L", *args]
    subprocess.run(cmd, check=True, capture_output=True)


def _create(state: Path) -> tuple[Path, Path]:
    site, bayes = state / "site", state / "bayes"
    site.mkdir(parents=True)
    bayes.mkdir()
    for pre in Path("/etc/spamassassin").glob("*.pre"):  # which plugins load: the package's choice
        shutil.copy(pre, site)
    (site / "local.cf").write_text(LOCAL_CF.format(bayes=bayes))
    (site / "user_prefs").write_text("")
    return site, bayes


def _score(site: Path, listing: Path, n: int, online: bool = False) -> tuple[dict[str, float], int, float]:
    """Run sa_score.pl over a list file: (score per path, how many messages a
    BAYES_ rule fired on, seconds from the first message to the last)."""
    proc = subprocess.Popen(
        ["perl", str(SCRIPT), str(site), str(RULES), str(listing), *(["online"] if online else [])],
        stdout=subprocess.PIPE,
        text=True,
    )
    ready = proc.stdout.readline()
    if ready.strip() != "READY":
        proc.kill()
        raise RuntimeError(f"sa_score.pl did not start: {ready!r}")
    t0 = time.perf_counter()
    by_path, bayes = {}, 0
    for line in progress(proc.stdout, n, NAME):
        path, score, bayes_rule = line.rstrip("\n").rsplit("\t", 2)
        by_path[path] = float(score)
        bayes += bayes_rule != "-"
    seconds = time.perf_counter() - t0
    if proc.wait() != 0:
        raise RuntimeError(f"sa_score.pl exited with status {proc.returncode}")
    return by_path, bayes, seconds


def run(corpus: Corpus, state: Path, out: Path):
    site, bayes_dir = _create(state)
    for label, paths in (("ham", corpus.train_ham), ("spam", corpus.train_spam)):
        (state / f"{label}.list").write_text("".join(p + "\n" for p in paths))
    print(f"SpamAssassin: sa-learn on {len(corpus.train)} messages", file=sys.stderr)
    t0 = time.perf_counter()
    _sa_learn(site, bayes_dir, "--no-sync", "--ham", "-f", str(state / "ham.list"))
    _sa_learn(site, bayes_dir, "--no-sync", "--spam", "-f", str(state / "spam.list"))
    _sa_learn(site, bayes_dir, "--sync")
    train_seconds = time.perf_counter() - t0
    (state / "test.list").write_text("".join(p + "\n" for p in corpus.test_paths))
    by_path, bayes, score_seconds = _score(site, state / "test.list", len(corpus.test))
    return save(
        out,
        NAME,
        corpus.test,
        [by_path[p] for p in corpus.test_paths],
        threshold=THRESHOLD,
        train_seconds=train_seconds,
        n_train=len(corpus.train),
        score_seconds=score_seconds,
        version=package_version("spamassassin"),
        notes=NOTES + f"; a BAYES_ rule fired on {bayes} of {len(by_path)} test messages",
    )


def run_online(items: list[Labelled], state: Path, out: Path):
    """Score each message, then learn it into Bayes with its label (the API
    sa-learn uses), in one Perl process.  Bayes stays silent until it has
    learned 200 ham and 200 spam (bayes_min_ham_num / bayes_min_spam_num)."""
    site, _ = _create(state)
    (state / "online.list").write_text(
        "".join(f"{'spam' if it.spam else 'ham'}\t{it.path}\n" for it in items)
    )
    by_path, bayes, seconds = _score(site, state / "online.list", len(items), online=True)
    return save(
        out,
        NAME,
        items,
        [by_path[str(it.path)] for it in items],
        threshold=THRESHOLD,
        score_seconds=seconds,
        online=True,
        version=package_version("spamassassin"),
        notes="SpamAssassin as in the split run (shipped rules, network tests off, no auto-learn); each "
        f"message scored, then learned into Bayes with its label; a BAYES_ rule fired on {bayes} of "
        f"{len(items)} messages",
    )
