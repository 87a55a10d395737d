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
# shellcheck disable=SC2086  # MAILSIFT may be a command with arguments
exec ${MAILSIFT:-mailsift} learn "--$class" -
