# A message was copied or moved into Junk: learn it as spam.
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.user" "*" {
  set "username" "${1}";
}

pipe :copy "mailsift-learn" ["spam", "${username}"];
