"""``mailsift`` command line.  Errors are one line on stderr naming what and
where, with an exit status from sysexits(3): 64 usage, 65 bad data, 66 no
input, 69 cannot listen, 70 internal error, 71 system error (serve), 73 cannot
create output, 75 try again later (the user store cannot take a learn now), 78
bad config.  ``serve`` writes its fatal errors in its log format (text or
JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from . import __version__
from .config import ConfigError, load_config, split_hostport, user_model_path
from .corpus import CorpusError, Labelled, mail_problem, read_index
from .datasets import ORDERS, build_index, ordered, split_index, write_index
from .evaluate import format_metrics, metrics, rule_hit_rates, score_online, score_split
from .filter import DEFAULT_MODEL, Filter, start_from_default
from .fitjobs import PARALLEL_MIN_MESSAGES, usable_cpus
from .model import LinearModel, ModelError, model_lock
from .report import strip_verdict_headers
from .rules import Context
from .rules.lists import AddressLists, normalise, pattern_problem
from .score import explain
from .store import SITE, StoreError, user_name
from .tokens import extract_bytes
from .train import MIN_PER_CLASS, PROFILES, collect, fit_model, labelled_stream, message_digest, progress

# sysexits(3)
EX_USAGE, EX_DATAERR, EX_NOINPUT = os.EX_USAGE, os.EX_DATAERR, os.EX_NOINPUT
EX_UNAVAILABLE, EX_CANTCREAT, EX_CONFIG = os.EX_UNAVAILABLE, os.EX_CANTCREAT, os.EX_CONFIG
EX_IOERR, EX_SOFTWARE, EX_OSERR, EX_TEMPFAIL = os.EX_IOERR, os.EX_SOFTWARE, os.EX_OSERR, os.EX_TEMPFAIL
EX_NOPERM = os.EX_NOPERM


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; sysexits says 64 (EX_USAGE)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


class CliError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except FileNotFoundError:
        raise CliError(f"{name}: no such file", EX_NOINPUT) from None
    except IsADirectoryError:
        raise CliError(f"{name}: is a folder, not a message file", EX_NOINPUT) from None
    except OSError as exc:
        raise CliError(f"{name}: cannot read ({exc.strerror})", EX_NOINPUT) from None


def _writable_folder(folder: Path, what: str) -> None:
    """Fail now, not after minutes of work, if ``what`` cannot be written in
    ``folder``: create and remove a file there or, if it does not exist yet,
    in the nearest folder above it that does (where it will be created).
    Leaves nothing behind, even when a usage error follows."""
    import tempfile

    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".mailsift-check-"):
            pass
    except OSError as exc:
        raise CliError(
            f"{what}: cannot write in {folder} ({exc.strerror or exc}); nothing done", EX_CANTCREAT
        ) from None


def _writable_file(path: Path, what: str, makes_folder: bool = True) -> None:
    """The same for a file written at ``path``; ``makes_folder`` False when
    the writer does not create missing folders, so the folder must exist."""
    if path.is_dir():
        raise CliError(f"{what} {path}: is a folder, not a file name; nothing done", EX_CANTCREAT)
    if not makes_folder and not path.parent.is_dir():
        raise CliError(f"{what} {path}: no folder {path.parent}; nothing done", EX_CANTCREAT)
    _writable_folder(path.parent, f"{what} {path}")


def _jobs(text: str) -> int:
    """argparse type of --jobs: 1 or more."""
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {jobs}")
    return jobs


def _add_jobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs",
        type=_jobs,
        default=usable_cpus(),
        metavar="N",
        help="processes for the cross-validation folds and the final fit, which run at once "
        f"(default: the cores here, {usable_cpus()}; 1 fits in this process). The model is the "
        f"same whatever N; under {PARALLEL_MIN_MESSAGES:,} messages it is always fitted in this process",
    )


def _cv_folds(text: str) -> int:
    """argparse type of --cv-folds: 2 or more (1 fold has nothing to test on,
    0 gave a meaningless 50% AUC)."""
    try:
        folds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if folds < 2:
        raise argparse.ArgumentTypeError(
            f"must be 2 or more, got {folds}: each fold is scored by a model trained on the others"
        )
    return folds


# -- score ---------------------------------------------------------------
def cmd_score(args) -> int:
    raw = _read_input(args.file)
    problem = mail_problem(raw)
    if problem:  # a verdict still (a filter must answer), but say the input is suspect
        where = "stdin" if args.file == "-" else args.file
        print(f"warning: {where}: not a mail message ({problem}); scored anyway", file=sys.stderr)
    config = load_config(args.config)
    if args.dns:
        split_hostport(args.dns, "--dns")
        config.dns.servers = [args.dns]
    user = _score_user(args)
    flt = Filter(config, args.model)
    context = Context(client_ip=args.ip or "", helo=args.helo or "", mail_from=args.mail_from or "")
    verdict = flt.score(raw, evidence=8 if (args.explain or args.json) else 0, context=context, user=user)
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=None if not args.explain else 2))
    elif args.explain:
        print(explain(verdict))
    else:
        print(verdict.summary())
    if flt.is_generic and not args.json:
        print(
            f"note: scored with the shipped default model ({flt.model_path}) at weight "
            f"{flt.model_weight:g}; train your own with 'mailsift train'",
            file=sys.stderr,
        )
    elif flt.base is not None and not args.json:
        print(f"note: {verdict.standing()}", file=sys.stderr)
    return 1 if verdict.is_spam else 0


# -- train ---------------------------------------------------------------
def _training_set(args, settings, dedupe=True, index_attr="index", quiet=False):
    index_items = []
    for index in getattr(args, index_attr) or []:
        index_items += read_index(index)
    ham = getattr(args, "ham", None) or []
    spam = getattr(args, "spam", None) or []
    stream = labelled_stream(ham, spam, index_items)
    total = len(index_items) if not ham and not spam else None
    return collect(stream, settings, total=total, dedupe=dedupe, show_progress=None if not quiet else False)


def cmd_train(args) -> int:
    if not (args.ham or args.spam or args.index):
        raise CliError("train: give --ham and --spam folders/mboxes, or --index FILE", EX_USAGE)
    config = load_config(args.config)  # a bad config fails before minutes of reading
    profile = PROFILES[args.features]
    settings = profile.features
    out = Path(args.model) if args.model else user_model_path()
    _writable_file(out, "train --model")  # before minutes of training, not after
    ts = _training_set(args, settings)
    print(
        f"read {ts.n_ham} ham and {ts.n_spam} spam in {ts.seconds:.1f} s; "
        f"{ts.duplicates} duplicates dropped"
        + "".join(f"; {n} skipped ({why})" for why, n in sorted(ts.skipped.items()))
    )
    _print_skipped(ts)
    minimum = args.min_per_class
    if ts.n_ham < minimum or ts.n_spam < minimum:
        raise CliError(
            f"train: need at least {minimum} messages of each class, have {ts.n_ham} ham "
            f"and {ts.n_spam} spam; no model written",
            EX_DATAERR,
        )
    if args.cv_folds > min(ts.n_ham, ts.n_spam):
        raise CliError(
            f"train: --cv-folds {args.cv_folds} is more than the {min(ts.n_ham, ts.n_spam)} messages "
            "of the smaller class; no model written",
            EX_USAGE,
        )
    weight = config.model.default_weight if args.generic else config.model.weight
    model, report = fit_model(
        ts,
        settings,
        profile.params,
        folds=args.cv_folds,
        generic=args.generic,
        threshold=config.thresholds.add_header,
        weight=weight,
        cap=config.model.default_cap if args.generic else None,
        jobs=args.jobs,
    )
    cv = report.cv
    print(
        f"trained in {report.seconds:.1f} s; {args.cv_folds}-fold cross-validation: "
        f"(1-AUC)% {cv['one_minus_auc_pct']:.4f}, spam caught at 0.1% FPR "
        f"{cv['spam_caught_pct_at_fpr_0_1']:.2f}%, at the default threshold "
        f"FPR {cv['fpr_pct']:.2f}% FNR {cv['fnr_pct']:.2f}%"
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # the lock file sits beside the model
        with _model_lock(out):  # not under a 'learn' that read the old model
            model.save(out)
    except OSError as exc:
        raise CliError(f"{out}: cannot write model ({exc.strerror})", EX_CANTCREAT) from None
    print(f"model written to {out}")
    return 0


def _print_skipped(ts) -> None:
    """Name the first skipped messages on stderr, so the user can look."""
    for _, detail in ts.skipped_examples:
        print(f"skipped {detail}", file=sys.stderr)
    more = sum(ts.skipped.values()) - len(ts.skipped_examples)
    if more > 0:
        print(f"skipped {more} more", file=sys.stderr)


def _score_user(args) -> str | None:
    """--user for score: a name that cannot be used (``usernames``) scores
    with the site model, with a warning (as the doors do: scoring never
    fails over a name)."""
    if getattr(args, "user", None) is None:
        return None
    try:
        return user_name(args.user)
    except StoreError as exc:
        print(f"warning: --user: {exc}; scored with the site model", file=sys.stderr)
        return None


# -- learn / unlearn -----------------------------------------------------
def _user(args) -> str | None:
    """--user, checked (a bad name, the empty one too, is a usage error: a
    learn for it must not teach the site model instead)."""
    if getattr(args, "user", None) is None:
        return None
    try:
        return user_name(args.user)
    except StoreError as exc:
        raise CliError(f"--user: {exc}", EX_USAGE) from None


def _learn_user(args, raw: bytes, user: str, unlearn: bool) -> int:
    """learn/unlearn for one user: the user's own state in the store; the
    site model (whichever ``score`` would use, the shipped default included)
    is only read.  ``user`` ``SITE``: the site's learns in the shared store
    (``[store] url`` and no service to hand them to), the same way."""
    flt = Filter(load_config(args.config), args.model)
    what = "spam" if args.spam else "ham"
    try:
        if user == SITE:
            outcome = flt.learn_site(raw, args.spam, forget=unlearn)
        else:
            outcome = flt.learn_user(raw, args.spam, user, forget=unlearn)
    except StoreError as exc:
        raise CliError(f"{args.file}: {exc}; nothing {'un' if unlearn else ''}learned", EX_TEMPFAIL) from None
    finally:
        if flt._users is not None:
            flt.users.close()
    if user == SITE:
        if outcome == "queued":
            print(f"{args.file}: the shared store does not answer; queued as {what}, applied when it is back")
            return 0
        return _print_outcome(args.file, outcome, args.spam, unlearn, " (for the site, in the shared store)")
    return _print_user_outcome(args.file, outcome, args.spam, user)


def _print_user_outcome(
    name: str, outcome: str, spam: bool, user: str, where: str = "", unlearn: bool = False
) -> int:
    """One user's learn outcome, learned here or by the service (``where``)."""
    what = "spam" if spam else "ham"
    messages = {
        "learned": f"learned as {what} for {user}",
        "relabelled": f"learned as {what} for {user} (was learned as the other class before)",
        "already-learned": f"already learned as {what} for {user}; nothing changed",
        "unlearned": f"unlearned as {what} for {user}",
        "not-learned": f"was never learned for {user}; nothing to do",
        "queued": (
            f"queued to be {'un' if unlearn else ''}learned as {what} for {user}"
            if where
            else f"the user store does not answer; queued as {what} for {user}, applied when it is back"
        ),
    }
    if outcome == "other-class":
        other = "ham" if spam else "spam"
        raise CliError(f"{name}: was learned as {other} for {user}, not {what}; nothing changed", EX_DATAERR)
    if outcome not in messages:
        raise CliError(f"{name}: unexpected outcome {outcome!r}", EX_UNAVAILABLE)
    print(f"{name}: {messages[outcome]}{where}")
    return 0


def cmd_lists(args) -> int:
    """Show or change one user's address lists."""
    user = _user(args)
    flt_config = load_config(args.config)
    from .users import Users

    users = Users.open(flt_config)
    try:
        current = users.lists(user)
        allow, block = list(current.allow), list(current.block)
        changed = False
        for pattern in args.allow or []:
            allow, changed = _add(allow, pattern), True
        for pattern in args.block or []:
            block, changed = _add(block, pattern), True
        for pattern in args.remove or []:
            p = normalise(pattern)
            if p not in allow and p not in block:
                raise CliError(f"--remove: {pattern!r} is on neither of {user}'s lists", EX_DATAERR)
            allow, block, changed = [a for a in allow if a != p], [b for b in block if b != p], True
        if changed:
            users.set_lists(user, AddressLists.of(allow, block))
    except StoreError as exc:
        raise CliError(f"lists: {exc}", EX_TEMPFAIL) from None
    finally:
        users.close()
    for kind, entries in (("allow", allow), ("block", block)):
        print(f"{kind}: " + (" ".join(entries) if entries else "(none)"))
    return 0


def _add(entries: list[str], pattern: str) -> list[str]:
    problem = pattern_problem(pattern)
    if problem:
        raise CliError(problem, EX_USAGE)
    p = normalise(pattern)
    return entries if p in entries else [*entries, p]


def _own_model_path(args) -> Path:
    """The model ``learn``/``unlearn`` change: --model, the config's
    model.path, or the user's own model (which may not exist yet).  The
    shipped file itself is never written."""
    if args.model:
        path = Path(args.model).expanduser()
    else:
        config = load_config(args.config)
        path = Path(config.model.path).expanduser() if config.model.path else user_model_path()
    if path.resolve() == DEFAULT_MODEL.resolve():
        raise CliError(
            f"{path}: is the shipped default model, which is never changed; leave out --model "
            f"(and model.path) to learn into your own model at {user_model_path()}",
            EX_USAGE,
        )
    return path


def _load_own(args, path: Path, create: bool) -> LinearModel | None:
    """The model at ``path``; with no own model there yet, ``learn``
    (``create``) starts one from the shipped default, to be written at that
    path, and ``unlearn`` gets None (nothing was learned)."""
    if path.exists() or args.model:
        return LinearModel.load(path)
    return start_from_default() if create else None


@contextmanager
def _model_lock(path: Path) -> Iterator[None]:
    """``model.model_lock`` (see there why), its failures as CLI errors."""
    lock = path.with_name(path.name + ".lock")
    with ExitStack() as held:
        try:
            held.enter_context(model_lock(path))
        except FileNotFoundError:
            raise CliError(f"{path}: model not found (no folder {path.parent})", EX_NOINPUT) from None
        except OSError as exc:
            why = f"cannot open the model's lock file ({exc.strerror})"
            raise CliError(f"{lock}: {why}", EX_CANTCREAT) from None
        yield


def _service_url(args, config) -> tuple[str | None, bool]:
    """The running service to hand learning to: --service URL, else the
    config's [serve] http door; (url, named on the command line)."""
    if getattr(args, "service", None):
        return args.service.rstrip("/"), True
    if config.serve.http:
        host, port = split_hostport(config.serve.http, "serve.http")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}", False
    return None, False


def _service_token(args, config) -> str:
    """The HTTP learn token: --token-file, else $MAILSIFT_TOKEN, else the
    config's [serve] http_token.  A file rather than a flag with the token
    itself, so it never shows in ps or shell history."""
    path = getattr(args, "token_file", None)
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise CliError(f"{path}: cannot read the token ({exc.strerror})", EX_NOINPUT) from None
    return os.environ.get("MAILSIFT_TOKEN", "").strip() or config.serve.http_token


def _learn_via_service(args, raw: bytes, unlearn: bool, user: str | None = None) -> int | None:
    """Hand the message to the running service (its learner is the only
    writer of the model and of the users' state, and its filter learns at
    once).  ``user``: for that user only (``?user=``).  None: no service is
    configured, or the configured one is not running: learn here instead."""
    import http.client
    import urllib.error
    import urllib.parse
    import urllib.request

    config = load_config(args.config)
    url, explicit = _service_url(args, config)
    if url is None:
        return None
    what = "spam" if args.spam else "ham"
    endpoint = f"{url}/{'unlearn' if unlearn else 'learn'}?class={what}"
    if user:  # bytes: a name from argv may hold surrogate escapes
        endpoint += "&user=" + urllib.parse.quote(user.encode("utf-8", "surrogateescape"), safe="")
    if getattr(args, "no_wait", False):
        endpoint += "&wait=0"
    request = urllib.request.Request(endpoint, data=raw, method="POST")
    request.add_header("Content-Type", "message/rfc822")
    token = _service_token(args, config)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            outcome = json.loads(resp.read())["outcome"]
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            error = exc.reason
        if exc.code in (401, 403):
            hint = (
                "the token given was refused"
                if token
                else "no token was given: put [serve] http_token in the file --config names, "
                "or pass --token-file FILE or MAILSIFT_TOKEN"
            )
            raise CliError(f"{url}: {error} ({hint})", EX_NOPERM) from None
        raise CliError(f"{url}: {error}", EX_UNAVAILABLE) from None
    except (urllib.error.URLError, OSError) as exc:
        if explicit:
            raise CliError(
                f"{url}: service not reachable ({getattr(exc, 'reason', exc)})", EX_UNAVAILABLE
            ) from None
        into = (
            f"{user}'s state in the user store"
            if user
            else "the shared store"
            if config.store.url
            else "the model file"
        )
        print(f"mailsift: no service at {url} (serve.http); learning into {into}", file=sys.stderr)
        return None
    except (ValueError, KeyError, TypeError, http.client.HTTPException):
        # something answers there, but not our HTTP door (the spamd port, another daemon)
        raise CliError(f"{url}: not a mailsift service (unexpected answer)", EX_UNAVAILABLE) from None
    where = f" (through the service at {url})"
    if user:
        return _print_user_outcome(args.file, outcome, args.spam, user, where, unlearn)
    return _print_outcome(args.file, outcome, args.spam, unlearn, where)


def _print_outcome(name: str, outcome: str, spam: bool, unlearn: bool, where: str = "") -> int:
    what = "spam" if spam else "ham"
    if outcome == "not-learned":
        print(f"{name}: was never learned; nothing to do{where}")
    elif outcome == "other-class":
        raise CliError(
            f"{name}: was learned as {'ham' if spam else 'spam'}, not {what}; nothing changed", EX_DATAERR
        )
    elif outcome == "forgotten":
        print(
            f"{name}: came from batch training; forgotten from the ledger, but its "
            f"weight stays until the next 'mailsift train'{where}"
        )
    elif outcome == "unlearned":
        print(f"{name}: unlearned as {what}{where}")
    elif outcome == "already-learned":
        print(f"{name}: already learned as {what}; nothing changed{where}")
    elif outcome == "queued":
        print(f"{name}: queued to be {'un' if unlearn else ''}learned as {what}{where}")
    elif outcome in ("learned", "relabelled"):
        note = " (was learned as the other class before)" if outcome == "relabelled" else ""
        print(f"{name}: learned as {what}{note}{where}")
    else:
        raise CliError(f"{name}: unexpected outcome {outcome!r}", EX_UNAVAILABLE)
    return 0


def cmd_learn(args, unlearn: bool = False) -> int:
    raw = _read_input(args.file)
    problem = mail_problem(raw)
    if problem:
        name = "stdin" if args.file == "-" else args.file
        raise CliError(f"{name}: {problem}; nothing {'un' if unlearn else ''}learned", EX_DATAERR)
    raw = strip_verdict_headers(raw)  # learn the message, not a filter's verdict on it
    user = _user(args)
    if not args.model:  # a model named on the command line is that file, not the service's
        # a user's learns go through the service too: it is the one writer of their state
        handed = _learn_via_service(args, raw, unlearn, user)
        if handed is not None:
            return handed
    if user:
        return _learn_user(args, raw, user, unlearn)
    if not args.model:
        if load_config(args.config).store.url:  # the site's learns live in the shared store
            return _learn_user(args, raw, SITE, unlearn)
    path = _own_model_path(args)
    if not path.exists() and not args.model:
        if unlearn:
            print(f"{args.file}: was never learned (there is no model of your own at {path}); nothing to do")
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)  # for the lock file beside the new model
    with _model_lock(path):
        return _learn_locked(args, raw, path, unlearn)


def _learn_locked(args, raw: bytes, path: Path, unlearn: bool) -> int:
    """The read-modify-write of ``learn``/``unlearn``; the caller holds the
    lock, so the model is read here, after it was taken."""
    model = _load_own(args, path, create=not unlearn)
    if model is None:  # the own model was removed between the check and the lock
        print(f"{args.file}: was never learned (there is no model of your own at {path}); nothing to do")
        return 0
    created = not path.exists()
    vec = extract_bytes(raw, model.settings).vec
    digest = message_digest(raw)
    spam = args.spam
    if unlearn:
        status, label = model.unlearn_one(vec, digest)
        if status == "not-learned":
            print(f"{args.file}: was never learned; nothing to do")
            return 0
        if label != int(spam):
            raise CliError(
                f"{args.file}: was learned as {'spam' if label else 'ham'}, not "
                f"{'spam' if spam else 'ham'}; nothing changed",
                EX_DATAERR,
            )
        if status == "forgotten":
            print(
                f"{args.file}: came from batch training; forgotten from the ledger, but its "
                "weight stays until the next 'mailsift train'"
            )
        else:
            print(f"{args.file}: unlearned as {'spam' if spam else 'ham'}")
    else:
        status, _ = model.learn_one(vec, spam, digest)
        what = "spam" if spam else "ham"
        if status == "already-learned":
            print(f"{args.file}: already learned as {what}; nothing changed")
            return 0
        note = " (was learned as the other class before)" if status == "relabelled" else ""
        print(f"{args.file}: learned as {what}{note}")
        if created:
            print(f"{path}: your own model, started from the shipped default (which is not changed)")
    try:
        model.save(path)
    except OSError as exc:
        raise CliError(f"{path}: cannot write model ({exc.strerror})", EX_CANTCREAT) from None
    return 0


# -- eval ----------------------------------------------------------------
def _check_eval_outputs(args) -> None:
    """eval's outputs can be written (and figures drawn) before any scoring."""
    if args.out:
        from .plots import PlotsUnavailable, require_matplotlib

        try:
            require_matplotlib()
        except PlotsUnavailable as exc:
            raise CliError(f"eval --out: {exc}", EX_UNAVAILABLE) from None
        _writable_folder(Path(args.out), "eval --out")
    if args.scores:
        _writable_file(Path(args.scores), "eval --scores", makes_folder=False)


def cmd_eval(args) -> int:
    _check_eval_outputs(args)
    if args.compare:
        if args.online or args.train or args.test:
            raise CliError(
                "eval: --compare reads finished runs; do not combine it with --train/--test/--online",
                EX_USAGE,
            )
        if not args.out:
            raise CliError("eval: --compare needs --out DIR for the report", EX_USAGE)
        return _eval_compare(args)
    if args.online and (args.train or args.test):
        raise CliError("eval: --online takes one index; do not combine it with --train/--test", EX_USAGE)
    if not args.online and not args.test:
        raise CliError(
            "eval: give --test INDEX (with --train INDEX to train first) or --online INDEX", EX_USAGE
        )
    config = load_config(args.config)
    config.dnsbl = []  # network rules off: a corpus has no live DNS, and results must be repeatable
    config.auth.enabled = False
    threshold_points = config.thresholds.add_header
    train_seconds, n_train = None, None
    test_dropped, dedup_note = None, None
    if args.online:
        profile = PROFILES[args.features]
        flt = Filter(config, model=LinearModel(profile.features, profile.params), shared_site=False)
        scored = score_online(flt, ordered(read_index(args.online), args.order, args.seed), _progress)
    else:
        items = read_index(args.test)  # a bad index fails before any training
        if args.train:
            start = time.perf_counter()
            profile = PROFILES[args.features]
            keep = args.keep_duplicates
            ts = _training_set(args, profile.features, dedupe=not keep, index_attr="train", quiet=args.json)
            model, _ = fit_model(ts, profile.features, profile.params, folds=args.cv_folds, jobs=args.jobs)
            train_seconds, n_train = time.perf_counter() - start, ts.n_ham + ts.n_spam
            if not keep:
                items, test_dropped = _drop_seen(items, set(ts.digests))
                dedup_note = (
                    f"{ts.duplicates} repeats dropped from train, {test_dropped} test messages "
                    "also in train dropped from test (same subject and body; --keep-duplicates keeps them)"
                )
            flt = Filter(config, model=model, shared_site=False)
        else:  # the model alone: not the site's learns in a shared store
            flt = Filter(config, args.model, shared_site=False)
        scored = score_split(flt, items, _progress)  # msgs/s is scoring speed; training has its own
    labels, scores, paths, seconds = scored.labels, scored.scores, scored.paths, scored.seconds
    result = metrics(np.array(labels), np.array(scores), threshold_points, seconds)
    if train_seconds:
        result["train_seconds"] = train_seconds
        result["train_msgs_per_s"] = n_train / train_seconds
    result["rules"] = rule_hit_rates(labels, scored.hit_names)
    if test_dropped is not None:
        result["train_duplicates_dropped"] = ts.duplicates
        result["test_duplicates_dropped"] = test_dropped
    if args.scores:
        try:
            with open(args.scores, "w", encoding="utf-8") as fh:
                for spam, s, p in zip(labels, scores, paths):
                    fh.write(f"{'spam' if spam else 'ham'} {s:.6f} {p}\n")
        except OSError as exc:
            raise CliError(f"{args.scores}: cannot write scores ({exc.strerror})", EX_CANTCREAT) from None
    if args.out:
        from .runs import Run, write_report, write_run

        how = (
            f"online ({args.order} order): each message scored, then learned"
            if args.online
            else f"trained on {' '.join(args.train)} ({args.features} features)"
            if args.train
            else f"model {flt.model_path}"
        )
        run = Run(
            name=args.name,
            labels=np.array(labels, dtype=bool),
            scores=np.array(scores),
            paths=paths,
            threshold=threshold_points,
            score_seconds=seconds,
            train_seconds=train_seconds,
            n_train=n_train,
            online=bool(args.online),
            version=__version__,
            notes=f"{how}; one process, in-process scoring; network rules off"
            + (f"; {dedup_note}" if dedup_note else ""),
            extra={"rules": result["rules"]},
        )
        try:
            write_run(run, args.out)
            write_report([run], args.out, title=f"mailsift eval: {args.online or args.test}")
        except OSError as exc:
            raise CliError(f"{args.out}: cannot write report ({exc.strerror})", EX_CANTCREAT) from None
    if args.json:
        from .runs import json_safe

        print(json.dumps(json_safe(result)))
    else:
        print(format_metrics(result))
        if dedup_note:
            print(f"duplicates      {dedup_note}")
        if args.out:
            print(f"report          {Path(args.out) / 'report.md'} (+ report.json, scores.tsv, figures)")
    return 0


def _drop_seen(items: list[Labelled], seen: set[bytes]) -> tuple[list[Labelled], int]:
    """Test items whose message (subject and body digest, as ``train``
    de-duplicates) is not in ``seen``, and how many were dropped: a test
    message the model was trained on inflates every figure.  An unreadable
    item is kept, so scoring reports it as it did."""
    kept = []
    for item in items:
        try:
            digest = message_digest(item.read())
        except CorpusError:
            digest = None
        if digest is None or digest not in seen:
            kept.append(item)
    return kept, len(items) - len(kept)


def _eval_compare(args) -> int:
    from .runs import RunError, markdown_table, read_run, write_report

    try:
        runs = [read_run(folder) for folder in args.compare]
        doc = write_report(runs, args.out, title="Comparison on one test set")
    except RunError as exc:
        raise CliError(f"eval: {exc}", EX_DATAERR) from None
    except OSError as exc:
        raise CliError(f"{args.out}: cannot write report ({exc.strerror})", EX_CANTCREAT) from None
    if args.json:
        print(json.dumps(doc))
    else:
        print(markdown_table([r["name"] for r in doc["runs"]], [r["metrics"] for r in doc["runs"]]), end="")
        figures = ", ".join(doc["figures"].values())
        print(f"report: {Path(args.out) / 'report.md'} (+ report.json, {figures})")
    return 0


def _progress(items, desc):
    return progress(items, len(items), desc)


# -- tune ----------------------------------------------------------------
def cmd_tune(args) -> int:
    import tomllib

    from .config import find_config, user_config_path
    from .tune import TuneError, overlap_warning, to_toml, tune

    if not (args.ham or args.spam or args.index):
        raise CliError("tune: give --index FILE, or --ham and --spam folders/mboxes", EX_USAGE)
    config = load_config(args.config)
    path = Path(args.config) if args.config else (find_config() or user_config_path())
    if not args.dry_run:  # fail before reading and scoring all the mail, not after
        _writable_file(path, "tune: config")
    flt = Filter(config, args.model)
    index_items = [it for index in args.index for it in read_index(index)]
    raws, labels = [], []
    skipped = 0
    for spam, _, raw in progress(labelled_stream(args.ham, args.spam, index_items), None, "reading"):
        if isinstance(raw, Exception) or mail_problem(raw):
            skipped += 1  # unreadable, empty or not mail, as 'train' skips them
            continue
        raws.append(raw)  # labelled_stream removed filters' verdict headers
        labels.append(spam)
    if skipped:
        print(f"{skipped} unreadable, empty or non-mail files skipped", file=sys.stderr)
    try:
        report = tune(
            flt, raws, labels, config.thresholds.add_header, args.skip_trained, min_per_class=MIN_PER_CLASS
        )
    except TuneError as exc:
        raise CliError(f"tune: {exc}; nothing written", EX_DATAERR) from None
    warning = overlap_warning(report, len(raws))
    if warning:
        print(warning, file=sys.stderr)
    b, a = report.before, report.after
    print(f"{report.n_ham} ham, {report.n_spam} spam; model {flt.model_path}")
    print(f"{'':24}{'(1-AUC)%':>10}{'caught@0.1%':>13}{'FPR%':>8}{'FNR%':>8}")
    for label, m in (("current weights", b), ("tuned (5-fold CV)", a)):
        print(
            f"{label:24}{m['one_minus_auc_pct']:10.4f}{m['spam_caught_pct_at_fpr_0_1']:13.2f}"
            f"{m['fpr_pct']:8.3f}{m['fnr_pct']:8.3f}"
        )
    print(f"model weight {report.model_weight:g}")
    for name, points in report.rule_weights.items():
        print(f"  {name:<24} {points:+.3f}")
    if report.unpriced:
        print(f"not priced (informational or undeclared, they stay at 0): {', '.join(report.unpriced)}")
    if args.dry_run:
        return 0
    data = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    key = "default_weight" if flt.is_generic else "weight"
    data.setdefault("model", {})[key] = report.model_weight
    data["rule_weights"] = {**data.get("rule_weights", {}), **report.rule_weights}
    _write_config(path, to_toml(data))
    print(f"written to {path}" + (" (previous version kept as .bak; comments are not kept)" if data else ""))
    return 0


def _write_config(path: Path, text: str) -> None:
    """Write a config file only if it loads: to a temporary file beside it,
    loaded and validated, then renamed over the old one (kept as .bak)."""
    import shutil
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise CliError(f"{path}: cannot write config ({exc.strerror})", EX_CANTCREAT) from None
    try:
        try:
            load_config(tmp)  # what is written must load
        except ConfigError as exc:
            msg = f"tune: the tuned config would not load ({exc}); {path} unchanged"
            raise CliError(msg, EX_CONFIG) from None
        if path.is_file():
            shutil.copy2(path, path.with_suffix(path.suffix + ".bak"))
        os.replace(tmp, path)
    except OSError as exc:
        raise CliError(f"{path}: cannot write config ({exc.strerror})", EX_CANTCREAT) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- corpus --------------------------------------------------------------
def cmd_corpus_index(args) -> int:
    if not (args.ham_glob or args.spam_glob):
        raise CliError("corpus index: give --ham-glob and/or --spam-glob patterns", EX_USAGE)
    items = build_index(args.folder, args.ham_glob, args.spam_glob)
    out = Path(args.out) if args.out else Path(args.folder) / "full.index"
    try:
        write_index(items, out)
    except OSError as exc:
        raise CliError(f"{out}: cannot write index ({exc.strerror})", EX_CANTCREAT) from None
    n_spam = sum(it.spam for it in items)
    print(f"{out}: {len(items) - n_spam} ham, {n_spam} spam")
    return 0


def cmd_corpus_split(args) -> int:
    try:
        result = split_index(args.index, ratio=args.ratio, seed=args.seed, by_date=args.by_date)
    except ValueError as exc:
        raise CliError(f"corpus split: {exc}", EX_USAGE) from None
    index = Path(args.index)
    prefix = Path(args.out_prefix) if args.out_prefix else index.with_suffix("")
    for name, items in (("train", result.train), ("test", result.test)):
        out = prefix.parent / f"{prefix.name}.{name}.index"
        try:
            write_index(items, out)
        except OSError as exc:
            raise CliError(f"{out}: cannot write index ({exc.strerror})", EX_CANTCREAT) from None
        n_spam = sum(it.spam for it in items)
        print(f"{out}: {len(items) - n_spam} ham, {n_spam} spam")
    how = "by date" if args.by_date else f"at random (seed {args.seed})"
    print(f"split {how}; {result.duplicates} test messages also in train (same subject and body)")
    if result.undated:
        print(f"{result.undated} messages had no usable Date header and went to train")
    return 0


# -- filter --------------------------------------------------------------
def cmd_filter(args) -> int:
    from .pipe import filter_message

    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:  # nothing to give back: fail, so the MTA keeps its own copy
        raise CliError(f"filter: cannot read the message ({exc.strerror or exc})", EX_IOERR) from None

    def make_filter():
        config = load_config(args.config)
        return Filter(config, args.model), config.proxy.scoring_deadline

    context = Context(client_ip=args.ip or "", helo=args.helo or "", mail_from=args.mail_from or "")
    result = filter_message(raw, make_filter, context)
    if result.error:
        print(f"mailsift filter: scoring failed, passed marked Unknown: {result.error}", file=sys.stderr)
    try:
        sys.stdout.buffer.write(result.message)
        sys.stdout.buffer.flush()
    except OSError as exc:  # the reader went away: it did not get the message, so say so
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise CliError(f"filter: cannot write the message ({exc.strerror or exc})", EX_IOERR) from None
    return 0


# -- serve ---------------------------------------------------------------
def cmd_serve(args) -> int:
    """Run the filter.  Every line it writes to stderr, a fatal start-up
    error (bad config, model, listen address) included, is in the log format
    the command line or the config asked for: under a log shipper that
    parses JSON, a plain-text "cannot listen" line would be lost or garbled
    exactly when the admin needs it."""
    import asyncio
    import logging
    from dataclasses import replace

    from . import logs
    from .config import requested_log_format, validate
    from .proxy import ListenError
    from .serve import door_addresses, run

    log_format = args.log_format or requested_log_format(args.config)
    try:
        config = load_config(args.config)
        overrides = {
            k: v
            for k, v in (
                ("listen", args.listen),
                ("relay", args.relay),
                ("mode", args.mode),
                ("workers", args.workers),
                ("log_format", args.log_format),
                ("allow_non_loopback", True if args.allow_non_loopback else None),
            )
            if v is not None
        }
        config.proxy = replace(config.proxy, **overrides)
        validate(config)
        named = {"smtp": args.listen, "milter": args.milter, "spamd": args.spamd, "http": args.http}
        for door, address in named.items():
            if address:
                split_hostport(address, f"--{'listen' if door == 'smtp' else door}")
        door_addresses(config, named)  # a refused address fails here, before any model loads
        logs.configure(log_format)
        asyncio.run(run(config, args.model, config.source or None, overrides, named))
    except KeyboardInterrupt:
        raise
    except ListenError as exc:
        return _serve_fatal(
            log_format, f"serve: cannot listen on {exc.address} ({exc.reason})", EX_UNAVAILABLE
        )
    except Exception as exc:
        code = _error_code(exc)
        if code is None and isinstance(exc, OSError):  # fork refused, out of descriptors, ...
            return _serve_fatal(log_format, f"serve: {exc}", EX_OSERR)
        if code is None:  # a bug: its traceback, in the log format too
            logs.configure(log_format)
            logging.getLogger("mailsift").critical(
                "serve failed: %s: %s", type(exc).__name__, exc, exc_info=exc,
                extra={"mailsift": {"event": "fatal", "msg": f"serve failed: {type(exc).__name__}: {exc}",
                                    "exit_status": EX_SOFTWARE}},
            )  # fmt: skip
            return EX_SOFTWARE
        return _serve_fatal(log_format, str(exc), code)
    return 0


def _serve_fatal(log_format: str, text: str, code: int) -> int:
    """One log line (text or JSON, as configured) for an error that stops
    ``serve``; the exit status is ``code``."""
    import logging

    from . import logs

    logs.configure(log_format)
    record = {"event": "fatal", "msg": text, "exit_status": code}
    logging.getLogger("mailsift").critical("%s", text, extra={"mailsift": record})
    return code


# -- parser --------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="mailsift",
        description="Spam filter that learns your own mail. Scores messages with a "
        "trainable model; see 'mailsift COMMAND --help'.",
    )
    p.add_argument("--version", action="version", version=f"mailsift {__version__}")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file (default: $MAILSIFT_CONFIG, "
        "~/.config/mailsift/config.toml, /etc/mailsift/config.toml)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def sources_opt(sp):
        # action="extend": "--ham A --ham B" reads both (argparse's default keeps only B)
        sp.add_argument(
            "--ham",
            nargs="+",
            action="extend",
            metavar="PATH",
            default=[],
            help="folders/mboxes of good mail",
        )
        sp.add_argument(
            "--spam", nargs="+", action="extend", metavar="PATH", default=[], help="folders/mboxes of spam"
        )
        sp.add_argument(
            "--index", nargs="+", action="extend", metavar="FILE", default=[], help="TREC-style index files"
        )

    def model_opt(sp, help_text):
        sp.add_argument("--model", metavar="FILE", help=help_text)
        # --config is accepted after the command too (SUPPRESS: an absent
        # sub-command option must not overwrite the top-level one)
        sp.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="TOML config file")

    s = sub.add_parser(
        "score",
        help="score one message",
        description="Score one message. Exit status: 0 not spam, 1 spam, 64 and up an error.",
    )
    s.add_argument("file", metavar="FILE|-", help="message file (raw RFC 822), or - for stdin")
    s.add_argument("--json", action="store_true", help="print the verdict as a JSON object")
    s.add_argument(
        "--explain",
        action="store_true",
        help="print the arithmetic of the verdict and the strongest features each way",
    )
    model_opt(s, "model file (default: config model.path, your trained model, or the shipped default)")
    s.add_argument(
        "--ip",
        help="address of the SMTP client that sent it (for DNS blocklists; default: "
        "the first public address in its Received headers)",
    )
    s.add_argument("--helo", help="HELO name the client gave")
    s.add_argument("--mail-from", metavar="ADDR", help="envelope sender")
    s.add_argument(
        "--dns",
        metavar="HOST:PORT",
        help="DNS server for the network rules (default: dns.servers in the config, else the system's)",
    )
    s.add_argument("--user", metavar="NAME", help="score with this user's model and address lists")
    s.set_defaults(func=cmd_score)

    t = sub.add_parser(
        "train",
        help="train a model from labelled folders or an index file",
        description="Train a new model from your own ham and spam. Sources are "
        "Maildir folders (cur/ and new/; name Dovecot subfolders like ~/Maildir/.Junk "
        "directly), mbox files, folders of message files, or an index file of "
        "'ham PATH'/'spam PATH' lines. Duplicates are dropped. The model is written "
        "atomically, so running filters never see half a file.",
    )
    sources_opt(t)
    t.add_argument("--model", metavar="OUT", help=f"where to write the model (default: {user_model_path()})")
    t.add_argument(
        "--features",
        choices=sorted(PROFILES),
        default="full",
        help="'full' reads whole messages, headers included (best for your own mail); "
        "'portable' reads only the raw bytes the sender wrote (for a model shared across "
        "mailboxes); 'portable-text' reads the sender's headers and decoded text (the "
        "features of the shipped default). Default: full",
    )
    t.add_argument(
        "--generic",
        action="store_true",
        help="mark the model as not trained on its user's mail, so it is used at model.default_weight",
    )
    t.add_argument(
        "--cv-folds",
        type=_cv_folds,
        default=3,
        help="cross-validation folds for the accuracy estimate and calibration, 2 or more (default 3)",
    )
    _add_jobs(t)
    t.add_argument("--min-per-class", type=int, default=MIN_PER_CLASS, help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_train)

    for name, unlearn in (("learn", False), ("unlearn", True)):
        lp = sub.add_parser(
            name,
            help=(
                "learn one message as spam or ham (for mail-client hooks)"
                if not unlearn
                else "take back an earlier 'learn' of one message"
            ),
            description=(
                "Learn one message into your model, incrementally. "
                "Learning the same message twice is detected. Works before any 'train': "
                "the first learn starts your own model as a copy of the shipped default."
                if not unlearn
                else "Take back an earlier 'mailsift learn' of this message."
            ),
        )
        g = lp.add_mutually_exclusive_group(required=True)
        g.add_argument("--spam", dest="spam", action="store_true", help="the message is spam")
        g.add_argument("--ham", dest="spam", action="store_false", help="the message is ham")
        lp.add_argument("file", metavar="FILE|-", help="message file, or - for stdin")
        lp.add_argument(
            "--user",
            metavar="NAME",
            help="for this user only: their own model on top of the site model, in the [store]",
        )
        lp.add_argument(
            "--service",
            metavar="URL",
            help="hand the message to the running 'mailsift serve' at URL (its HTTP door, e.g. "
            "http://127.0.0.1:8025), so clicks are serialised and the filter learns at once. "
            "Default: the [serve] http door of the config if set (the model file if it is not running), "
            "else the model file",
        )
        lp.add_argument(
            "--no-wait",
            action="store_true",
            help="through the service: return once the message is queued for the learner (prints "
            "'queued'; the outcome goes to the service's log) instead of after the model is written",
        )
        lp.add_argument(
            "--token-file",
            metavar="FILE",
            help="file holding the service's learn token ([serve] http_token); default: $MAILSIFT_TOKEN, "
            "else http_token from the config",
        )
        model_opt(
            lp,
            "model file to update directly (default: through the service if one is configured, "
            "else your trained model); with --user, the site model",
        )
        lp.set_defaults(func=lambda a, u=unlearn: cmd_learn(a, unlearn=u))

    ls = sub.add_parser(
        "lists",
        help="show or change a user's address lists",
        description="A user's own allow and block lists (glob patterns on addresses, like "
        "*@example.com), kept in the [store]. Allow entries count only for authenticated senders "
        "(SPF or DKIM pass aligned with From); block entries always. The site's lists are [lists] "
        "in the config.",
    )
    ls.add_argument("--user", metavar="NAME", required=True, help="whose lists")
    ls.add_argument("--allow", metavar="PATTERN", action="append", help="add to the allow list")
    ls.add_argument("--block", metavar="PATTERN", action="append", help="add to the block list")
    ls.add_argument("--remove", metavar="PATTERN", action="append", help="remove from either list")
    ls.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="TOML config file")
    ls.set_defaults(func=cmd_lists)

    e = sub.add_parser(
        "eval",
        help="measure accuracy on a labelled index",
        description="Measure accuracy. --train A --test B trains a fresh model on A "
        "and scores B; --test B alone scores with the current model; --online A "
        "scores each message in order and then learns its label (TREC immediate "
        "feedback). Prints n_ham, n_spam, (1-AUC)%, lam%, spam caught at 0.1% and "
        "0.01% FPR, FPR%/FNR% at the add-header threshold, and msgs/s. --out DIR adds "
        "the per-message scores, a JSON and Markdown report and PNG figures; --compare RUN... "
        "--out DIR puts several runs (mailsift's and benchmarks/peers') on one table and one ROC.",
    )
    e.add_argument(
        "--train", nargs="+", action="extend", metavar="INDEX", help="index file(s) to train on (repeatable)"
    )
    e.add_argument("--test", metavar="INDEX", help="index file to score")
    e.add_argument("--online", metavar="INDEX", help="index file for the online protocol")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--scores", metavar="FILE", help="write 'LABEL SCORE PATH' lines")
    e.add_argument(
        "--out",
        metavar="DIR",
        help="write scores.tsv, run.json, report.json, report.md and figures (roc.png, hist.png, "
        "learning.png for --online) to DIR",
    )
    e.add_argument(
        "--order",
        choices=ORDERS,
        default="index",
        help="message order for --online: as the index lists them (default; TREC indexes are "
        "chronological), by Date header, or shuffled with --seed. An index listing all ham before "
        "all spam needs date or shuffle",
    )
    e.add_argument("--seed", type=int, default=0, help="seed for --order shuffle (default 0)")
    e.add_argument("--name", default="mailsift", help="the run's name in reports (default mailsift)")
    e.add_argument(
        "--compare",
        nargs="+",
        action="extend",
        metavar="RUN",
        help="compare finished runs (folders written by --out or benchmarks/peers) on one table and "
        "one ROC figure, written to --out DIR",
    )
    e.add_argument(
        "--features",
        choices=sorted(PROFILES),
        default="full",
        help="feature profile when training (default full)",
    )
    e.add_argument(
        "--keep-duplicates",
        action="store_true",
        help="with --train: keep repeated messages in train and test messages that are also in "
        "train (by default both are dropped, as 'train' does, and the counts printed)",
    )
    e.add_argument("--cv-folds", type=_cv_folds, default=3, help=argparse.SUPPRESS)
    _add_jobs(e)
    model_opt(e, "model for --test alone (default: as for score)")
    e.set_defaults(func=cmd_eval)
    u = sub.add_parser(
        "tune",
        help="fit the model weight and rule points to your labelled mail",
        description="Fit the model's weight and every rule's points to labelled mail by regularised "
        "logistic regression, print the gain over the current weights (5-fold cross-validation), and "
        "write them to the config file (the one --config names, else $MAILSIFT_CONFIG, else the "
        "user config; [model] weight and [rule_weights]; the old file is kept as .bak). "
        "Network rules run as configured: for a stored corpus, switch them off. Informational "
        "hits (*_TIMEOUT, DNS_DEADLINE, *_TEMPERROR, CLIENT_FROM_RECEIVED, ...) are never priced. Tune on "
        "mail the model was not trained on: the overlap is counted from the model's ledger and warned about.",
    )
    sources_opt(u)
    u.add_argument("--dry-run", action="store_true", help="print the weights, write nothing")
    u.add_argument(
        "--skip-trained",
        action="store_true",
        help="leave out messages the model was trained on or learned (found in its ledger). Without "
        "it they are used and a warning says how many: on them the model is overconfident, so the "
        "fit zeroes the rules",
    )
    model_opt(u, "model to tune for (default: as for score)")
    u.set_defaults(func=cmd_tune)

    c = sub.add_parser(
        "corpus",
        help="make index files and train/test splits",
        description="Dataset tools: index files from folders, and train/test splits of an index.",
    )
    csub = c.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    ci = csub.add_parser(
        "index",
        help="write an index file from folders",
        description="Write a TREC-style "
        "index ('ham PATH' / 'spam PATH', paths relative to the index file) of the files "
        "under FOLDER that match the patterns.",
    )
    ci.add_argument("folder", metavar="FOLDER")
    ci.add_argument(
        "--ham-glob", nargs="+", action="extend", default=[], metavar="PATTERN", help="e.g. 'easy_ham*/*'"
    )
    ci.add_argument(
        "--spam-glob", nargs="+", action="extend", default=[], metavar="PATTERN", help="e.g. 'spam*/*'"
    )
    ci.add_argument("-o", "--out", metavar="FILE", help="index to write (default FOLDER/full.index)")
    ci.set_defaults(func=cmd_corpus_index)
    cs = csub.add_parser(
        "split",
        help="split an index into train and test",
        description="Split an index "
        "into PREFIX.train.index and PREFIX.test.index, stratified by class, at random or "
        "by the Date header, and report messages found in both halves.",
    )
    cs.add_argument("index", metavar="INDEX")
    cs.add_argument("--ratio", type=float, default=0.5, help="share of each class to train (default 0.5)")
    cs.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    cs.add_argument("--by-date", action="store_true", help="oldest mail trains, newest tests")
    cs.add_argument("--out-prefix", metavar="PREFIX", help="default: the index's path without .index")
    cs.set_defaults(func=cmd_corpus_split)

    v = sub.add_parser(
        "serve",
        help="run the filter as a service: SMTP content filter, milter, spamd, HTTP",
        description="One service, many doors: every door scores through one pool of scoring "
        "processes and learns through one learner, the only writer of the model (a learned message "
        "is used at once, no reload needed). Doors: --listen (SMTP content filter for Postfix "
        "content_filter/smtpd_proxy_filter), --milter (Postfix smtpd_milters, Sendmail), --spamd (for "
        "spamc: Exim, procmail, maildrop, Sieve), --http (POST /score, /learn, /unlearn; GET /metrics, "
        "/healthz); each can also be set in the [serve] section of the config file (smtp, milter, spamd, "
        "http). Which doors listen: exactly those named on the command line or in [serve]; a door not "
        "named does not listen. Only when no door is named at all does the SMTP door listen, on "
        "[proxy] listen (127.0.0.1:10025), as before. Every door listens on loopback only: an address "
        "beyond it is refused unless --allow-non-loopback ([proxy] allow_non_loopback). SMTP door: "
        "after-queue (Postfix content_filter) receives, scores, adds X-Spam-* headers and relays to "
        "--relay with the same envelope, answering 250 only after the next hop accepted, 451 if it is "
        "down or slow; before-queue (smtpd_proxy_filter) also refuses mail at the reject threshold "
        "with 550. SIGHUP reloads the config and model; SIGTERM/SIGINT close every door at once and "
        "let what is in flight finish for up to [proxy] relay_timeout.",
    )
    v.add_argument(
        "--listen", metavar="HOST:PORT", help="SMTP door (default 127.0.0.1:10025 when no door is named)"
    )
    v.add_argument(
        "--milter", metavar="HOST:PORT", help="milter door for Postfix smtpd_milters (e.g. 127.0.0.1:11332)"
    )
    v.add_argument("--spamd", metavar="HOST:PORT", help="spamd door for spamc (e.g. 127.0.0.1:783)")
    v.add_argument(
        "--http", metavar="HOST:PORT", help="HTTP door: score, learn, metrics (e.g. 127.0.0.1:8025)"
    )
    v.add_argument("--relay", metavar="HOST:PORT", help="SMTP door's next hop (default 127.0.0.1:10026)")
    v.add_argument("--mode", choices=["after-queue", "before-queue"], help="SMTP door: default after-queue")
    v.add_argument("--workers", type=int, help="scoring processes (default: one per core)")
    v.add_argument(
        "--log-format", choices=["text", "json"], help="one log line per message on stderr (default text)"
    )
    v.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="allow door addresses beyond loopback, for every door (refused otherwise: anyone who reaches "
        "the SMTP door can hand mail to the next hop, the others score and learn); only behind a "
        "firewall that lets just your MTA and clients in",
    )
    model_opt(v, "model file (default: as for score)")
    v.set_defaults(func=cmd_serve)

    f = sub.add_parser(
        "filter",
        help="read a message on stdin, write it to stdout with the X-Spam-* headers added",
        description="Pipe filter for procmail (':0fw' then '| mailsift filter'), maildrop (xfilter) "
        "and Exim (transport_filter): reads one message, writes it back with the headers 'mailsift "
        "serve' adds. The message always comes back: if the config or model is broken, scoring fails "
        "or takes longer than proxy.scoring_deadline, it is written unchanged with 'X-Spam-Status: "
        "Unknown' and a reason on stderr. Exit status 0, unless the message cannot be read or "
        "written (74), so the delivery agent keeps its own copy.",
    )
    f.add_argument("file", metavar="FILE|-", nargs="?", default="-", help="message file (default: stdin)")
    model_opt(f, "model file (default: as for score)")
    f.add_argument("--ip", help="address of the SMTP client (for DNS blocklists and SPF)")
    f.add_argument("--helo", help="HELO name the client gave")
    f.add_argument("--mail-from", metavar="ADDR", help="envelope sender")
    f.set_defaults(func=cmd_filter)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EX_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("mailsift: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CliError, ModelError, CorpusError, ConfigError) as exc:
        print(f"mailsift: {exc}", file=sys.stderr)
        return _error_code(exc)


def _error_code(exc: BaseException) -> int | None:
    """The sysexits status of an error the commands report in one line;
    None for anything else (a bug)."""
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, ModelError):
        return EX_DATAERR if "not found" not in str(exc) else EX_NOINPUT
    if isinstance(exc, CorpusError):
        return EX_NOINPUT
    if isinstance(exc, ConfigError):
        return EX_CONFIG
    return None


if __name__ == "__main__":
    sys.exit(main())
