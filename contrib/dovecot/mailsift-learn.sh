#!/bin/sh
# Dovecot IMAPSieve pipe program: learn the message on stdin.
#   mailsift-learn.sh spam|ham [IMAP-USER]
# Dovecot's script service starts it with an empty environment; settings
# come from mailsift-learn.env beside this script.  mailsift's exit status
# and message reach Dovecot's log when learning fails.
set -eu
class=${1:-}
case "$class" in
  spam|ham) ;;
  *) echo "mailsift-learn.sh: class must be spam or ham, got '$class'" >&2; exit 64 ;;
esac
env_file="$(dirname "$0")/mailsift-learn.env"
if [ -r "$env_file" ]; then
  . "$env_file"
fi
# MAILSIFT_LEARN_OPTS=--no-wait (in the .env): through the service, return once
# the click is queued rather than after the model is written (README, Dovecot)
# MAILSIFT_LEARN_USER=yes (in the .env): the click teaches the IMAP user's own
# model (--user), not the site model every mailbox is scored with (README,
# Many mailboxes)
user=${2:-}
# shellcheck disable=SC2086  # MAILSIFT may be a command with arguments
if [ "${MAILSIFT_LEARN_USER:-no}" = yes ] && [ -n "$user" ]; then
  exec ${MAILSIFT:-mailsift} learn ${MAILSIFT_LEARN_OPTS:-} "--$class" --user="$user" -
fi
exec ${MAILSIFT:-mailsift} learn ${MAILSIFT_LEARN_OPTS:-} "--$class" -
