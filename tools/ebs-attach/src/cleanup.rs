//! Detaching and deleting, and what ends a `--cleanup-on-exit` run.
//!
//! The volume must go "after success or any failure". In a pipeline ebs-attach cannot see the
//! other stages' statuses, but it can see its stdout: when the reader (blockdump) exits, for any
//! reason, the write end of the pipe reports POLLERR. That, a signal (SIGINT, SIGTERM, SIGPIPE) or
//! optionally stdin's end of file starts the cleanup.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::VolumeState;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::signal::unix::{SignalKind, signal};

use s3pipe::aws::aws_failure;
use s3pipe::event::{Event, EventSink};
use s3pipe::signals::Cancellation;
use s3pipe::{ExitCode, Failure};

use crate::TOOL;
use crate::attach::describe;

/// Waits for the end of the pipeline; says what ended it.
pub async fn wait_for_end(watch_stdin: bool, cancellation: &Cancellation) -> String {
    // Plain threads, not spawn_blocking: the runtime waits for its blocking tasks when it shuts
    // down, and these two may block forever (a reader that stays, a stdin that never ends).
    let hangup = detached(stdout_hangup);
    let stdin_eof = async {
        if watch_stdin {
            let _ = detached(|| {
                crate::attach::stdin_at_eof();
            })
            .await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let mut sigpipe = signal(SignalKind::pipe()).ok();
    let sigpipe_received = async {
        match sigpipe.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = hangup => "the reader of stdout finished".to_string(),
        _ = cancellation.token().cancelled() => format!("signal {}", cancellation.signal().unwrap_or(0)),
        _ = sigpipe_received => "SIGPIPE".to_string(),
        _ = stdin_eof => "end of stdin".to_string(),
    }
}

/// Runs `work` on a detached thread; the receiver resolves when it returns.
fn detached(work: fn()) -> tokio::sync::oneshot::Receiver<()> {
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        work();
        let _ = done.send(());
    });
    finished
}

/// Blocks until stdout is a pipe whose reader has gone (POLLERR/POLLHUP). For a terminal or a
/// file this never happens, and only a signal ends the wait.
fn stdout_hangup() {
    let stdout = std::io::stdout();
    let fd = stdout.as_fd();
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::empty())];
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(0) => continue,
            Ok(_) => {
                let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                if revents.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

/// Detach (and delete unless `keep`), reporting on stderr: the cleanup of `--cleanup-on-exit`.
pub async fn clean(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
    instance_id: Option<&str>,
    keep: bool,
    timeout: Duration,
) -> Result<(), Failure> {
    let events = EventSink::stderr();
    let detached = detach_and_wait(ec2, volume_id, instance_id, false, timeout).await?;
    if detached {
        emit(
            &events,
            Event::new(TOOL, "volume_detached").with("volume_id", volume_id),
        );
    }
    if !keep {
        delete_with_retry(ec2, volume_id, timeout).await?;
        emit(
            &events,
            Event::new(TOOL, "volume_deleted").with("volume_id", volume_id),
        );
    }
    Ok(())
}

/// After a failure before the event: clean up as well as we can, logging what fails (the
/// original failure is what gets reported).
pub async fn cleanup_after_failure(ec2: &aws_sdk_ec2::Client, volume_id: &str, keep: bool) {
    if let Err(failure) = clean(ec2, volume_id, None, keep, Duration::from_secs(300)).await {
        tracing::error!(
            volume_id,
            "cleanup failed, remove the volume by hand: {failure}"
        );
    }
}

fn emit(events: &EventSink, event: Event) {
    if let Err(err) = events.emit(&event) {
        tracing::warn!("cannot write the event: {err}");
    }
}

/// Detaches the volume if it is attached and waits until it is available. False when it was not
/// attached. The instance id comes from the volume's attachment when not given (DetachVolume
/// without it is refused by some implementations).
pub async fn detach_and_wait(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
    instance_id: Option<&str>,
    force: bool,
    timeout: Duration,
) -> Result<bool, Failure> {
    let volume = match describe(ec2, volume_id).await {
        Ok(volume) => volume,
        Err(failure) if failure.exit == ExitCode::NotFound => return Ok(false),
        Err(failure) => return Err(failure),
    };
    let Some(attachment) = volume.attachments().first() else {
        return Ok(false);
    };
    let instance = instance_id
        .map(str::to_string)
        .or_else(|| attachment.instance_id().map(str::to_string));
    let result = ec2
        .detach_volume()
        .volume_id(volume_id)
        .set_instance_id(instance)
        .set_device(attachment.device().map(str::to_string))
        .force(force)
        .send()
        .await;
    if let Err(err) = result {
        let failure = aws_failure(format!("cannot detach {volume_id}"), &err);
        let code = aws_smithy_types_code(&err);
        if !(code == "IncorrectState" || code == "InvalidAttachment.NotFound") {
            return Err(failure);
        }
    }
    let start = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        let volume = describe(ec2, volume_id).await?;
        if volume.state() == Some(&VolumeState::Available) && volume.attachments().is_empty() {
            return Ok(true);
        }
        if start.elapsed() >= timeout {
            return Err(Failure::new(
                ExitCode::Network,
                format!(
                    "{volume_id} was still not detached after {}",
                    humantime::format_duration(timeout)
                ),
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn aws_smithy_types_code<E, R>(err: &aws_sdk_ec2::error::SdkError<E, R>) -> String
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata,
{
    use aws_sdk_ec2::error::ProvideErrorMetadata;
    err.code().unwrap_or("").to_string()
}

/// DeleteVolume, retried while the volume is still in use (a detachment settling).
pub async fn delete_with_retry(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
    timeout: Duration,
) -> Result<(), Failure> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        match ec2.delete_volume().volume_id(volume_id).send().await {
            Ok(_) => return Ok(()),
            Err(err) => {
                let code = aws_smithy_types_code(&err);
                if code == "InvalidVolume.NotFound" {
                    return Ok(());
                }
                if code != "VolumeInUse" || start.elapsed() >= timeout {
                    return Err(aws_failure(format!("cannot delete {volume_id}"), &err));
                }
                tracing::debug!(volume_id, "still in use; retrying the delete");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// `ebs-attach detach`.
pub async fn detach(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
    instance_id: Option<&str>,
    force: bool,
    timeout: Duration,
    cancellation: &Cancellation,
) -> Result<(), Failure> {
    let detached = tokio::select! {
        result = detach_and_wait(ec2, volume_id, instance_id, force, timeout) => result?,
        _ = cancellation.token().cancelled() => return Err(cancellation.failure("the detachment may still be under way")),
    };
    emit(
        &EventSink::stdout(),
        Event::new(
            TOOL,
            if detached {
                "volume_detached"
            } else {
                "volume_not_attached"
            },
        )
        .with("volume_id", volume_id),
    );
    Ok(())
}

/// `ebs-attach delete`: detach first if needed.
pub async fn delete(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
    instance_id: Option<&str>,
    force: bool,
    timeout: Duration,
    cancellation: &Cancellation,
) -> Result<(), Failure> {
    let work = async {
        detach_and_wait(ec2, volume_id, instance_id, force, timeout).await?;
        delete_with_retry(ec2, volume_id, timeout).await
    };
    tokio::select! {
        result = work => result?,
        _ = cancellation.token().cancelled() => return Err(cancellation.failure("the volume may not be deleted")),
    }
    emit(
        &EventSink::stdout(),
        Event::new(TOOL, "volume_deleted").with("volume_id", volume_id),
    );
    Ok(())
}
