#!/usr/bin/perl
# Score messages with SpamAssassin's own API, loaded once (as spamd does),
# one message at a time on one core.  Prints READY once the rules are
# compiled (so startup is not counted), then "path<TAB>score<TAB>BAYES_nn"
# per message (the Bayes rule that fired, or "-": the Bayes DB is in use).
# Arguments: SITE_CONFIG_DIR RULES_DIR LIST_OF_PATHS [online]
# With "online", each list line is "ham|spam<TAB>path" and every message is
# learned into Bayes (as sa-learn does) right after it is scored.
use strict;
use warnings;
use Mail::SpamAssassin;

my ($site, $rules, $list, $mode) = @ARGV;
my $online = defined $mode && $mode eq 'online';
my $sa = Mail::SpamAssassin->new({
    site_rules_filename => $site,
    rules_filename      => $rules,
    userprefs_filename  => "$site/user_prefs",
    local_tests_only    => 1,
    dont_copy_prefs     => 1,
});
$sa->compile_now(0);
$| = 1;
print "READY\n";
open(my $paths, '<', $list) or die "$list: $!\n";
while (my $line = <$paths>) {
    chomp $line;
    my ($label, $path) = $online ? split(/\t/, $line, 2) : ('', $line);
    open(my $fh, '<:raw', $path) or die "$path: $!\n";
    my $raw = do { local $/; <$fh> };
    close $fh;
    my $msg = $sa->parse($raw);
    my $status = $sa->check($msg);
    my ($bayes) = grep { /^BAYES_/ } split /,/, $status->get_names_of_tests_hit();
    printf "%s\t%.6f\t%s\n", $path, $status->get_score(), $bayes // "-";
    if ($online) {
        $sa->learn($msg, undef, $label eq 'spam', 0)->finish();
    }
    $status->finish();
    $msg->finish();
}
$sa->finish_learner() if $online;
