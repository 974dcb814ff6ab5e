#!/usr/bin/perl
# Writes stdin as one dump file on an Amanda S3 virtual tape, through Amanda's own Device API
# and transfer architecture (the code path amdump's taper uses), so that tests and the benchmark
# compare against real Amanda rather than an imitation.
#
# usage: amanda-write.pl CONFIG DEVICE LABEL DATESTAMP HOST DISK
# The device is started in ACCESS_WRITE mode: Amanda relabels the tape (deleting its files) and
# writes file 1. Run as the Amanda user, with the curl shim in LD_PRELOAD (see curl-post-shim.c).
use lib '/usr/lib/x86_64-linux-gnu/amanda/perl';
use strict;
use warnings;
use Amanda::Config qw( :init :getconf config_dir_relative );
use Amanda::Device qw( :constants );
use Amanda::Header;
use Amanda::MainLoop;
use Amanda::Util qw( :constants );
use Amanda::Xfer qw( :constants );

my ($config, $devname, $label, $datestamp, $host, $disk) = @ARGV;
die "usage: $0 CONFIG DEVICE LABEL DATESTAMP HOST DISK\n" unless defined $disk;

Amanda::Util::setup_application("amanda-write", "server", $CONTEXT_CMDLINE, "amanda", "amanda");
config_init($CONFIG_INIT_EXPLICIT_NAME, $config);
my ($level, @errors) = config_errors();
die "config: @errors\n" if $level >= $CFGERR_ERRORS;
Amanda::Util::finish_setup($RUNNING_AS_ANY);

my $dev = Amanda::Device->new($devname);
die "device: " . $dev->error_or_status() . "\n" if $dev->status != $DEVICE_STATUS_SUCCESS;
$dev->configure(1) or die "configure: " . $dev->error_or_status() . "\n";
$dev->start($ACCESS_WRITE, $label, $datestamp) or die "start: " . $dev->error_or_status() . "\n";

my $hdr = Amanda::Header->new();
$hdr->{type} = $Amanda::Header::F_SPLIT_DUMPFILE;
$hdr->{datestamp} = $datestamp;
$hdr->{name} = $host;
$hdr->{disk} = $disk;
$hdr->{dumplevel} = 0;
$hdr->{compressed} = 0;
$hdr->{comp_suffix} = "N";
$hdr->{program} = "/bin/tar";
$hdr->{partnum} = 1;
$hdr->{totalparts} = 1;
$dev->start_file($hdr) or die "start_file: " . $dev->error_or_status() . "\n";

my $failed;
my $xfer = Amanda::Xfer->new([
    Amanda::Xfer::Source::Fd->new(fileno(STDIN)),
    Amanda::Xfer::Dest::Device->new($dev, 0),
]);
$xfer->start(sub {
    my ($src, $msg, $xfer) = @_;
    if ($msg->{type} == $XMSG_ERROR) {
        $failed = $msg->{message};
    } elsif ($msg->{type} == $XMSG_DONE) {
        Amanda::MainLoop::quit();
    }
}, 0, 0);
Amanda::MainLoop::run();
die "transfer: $failed\n" if $failed;
$dev->finish() or die "finish: " . $dev->error_or_status() . "\n";
print "file ", $dev->file(), "\n";
