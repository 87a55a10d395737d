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


def run(corpus: Corpus, state: Path, out: Path):
    site, bayes = state / "site", state / "bayes"
    site.mkdir(parents=True)
    bayes.mkdir()
    for pre in Path("/etc/spamassassin").glob("*.pre"):  # which plugins load: the package's choice
        shutil.copy(pre, site)
    (site / "local.cf").write_text(LOCAL_CF.format(bayes=bayes))
    (site / "user_prefs").write_text("")
    for label, paths in (("ham", corpus.train_ham), ("spam", corpus.train_spam)):
        (state / f"{label}.list").write_text("".join(p + "\n" for p in paths))
    print(f"SpamAssassin: sa-learn on {len(corpus.train)} messages", file=sys.stderr)
    t0 = time.perf_counter()
    _sa_learn(site, bayes, "--no-sync", "--ham", "-f", str(state / "ham.list"))
    _sa_learn(site, bayes, "--no-sync", "--spam", "-f", str(state / "spam.list"))
    _sa_learn(site, bayes, "--sync")
    train_seconds = time.perf_counter() - t0
    (state / "test.list").write_text("".join(p + "\n" for p in corpus.test_paths))
    proc = subprocess.Popen(
        ["perl", str(SCRIPT), str(site), str(RULES), str(state / "test.list")],
        stdout=subprocess.PIPE,
        text=True,
    )
    ready = proc.stdout.readline()
    if ready.strip() != "READY":
        proc.kill()
        raise RuntimeError(f"sa_score.pl did not start: {ready!r}")
    t0 = time.perf_counter()
    by_path, bayes = {}, 0
    for line in progress(proc.stdout, len(corpus.test), "SpamAssassin scoring"):
        path, score, bayes_rule = line.rstrip("\n").rsplit("\t", 2)
        by_path[path] = float(score)
        bayes += bayes_rule != "-"
    score_seconds = time.perf_counter() - t0
    if proc.wait() != 0:
        raise RuntimeError(f"sa_score.pl exited with status {proc.returncode}")
    return save(
        out,
        NAME,
        corpus,
        [by_path[p] for p in corpus.test_paths],
        threshold=THRESHOLD,
        train_seconds=train_seconds,
        score_seconds=score_seconds,
        version=package_version("spamassassin"),
        notes=NOTES + f"; a BAYES_ rule fired on {bayes} of {len(by_path)} test messages",
    )
