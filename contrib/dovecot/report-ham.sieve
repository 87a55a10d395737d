# A message was copied or moved out of Junk: learn it as ham, unless it went
# to the Trash (deleting spam is not saying it was good mail).
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.mailbox" "*" {
  set "mailbox" "${1}";
}

if string "${mailbox}" "Trash" {
  stop;
}

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}

pipe :copy "mailsift-learn" ["ham", "${username}"];
