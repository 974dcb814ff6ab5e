//! stdout as the data end of a pipe.
//!
//! When the reader goes away (`s3-get ... | head -c 100`), writes fail with `EPIPE`. Rust ignores
//! SIGPIPE, so `println!` would panic; like ripgrep, the tools treat it as the reader having had
//! enough: stop producing output, clean up, and exit without an error message.

use std::io;

/// Whether an I/O error means the reader of our stdout has gone away.
pub fn is_broken_pipe(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::BrokenPipe
}

/// Writes all of `data` to stdout; `Ok(false)` when the reader has gone away.
pub fn write_stdout(out: &mut impl io::Write, data: &[u8]) -> io::Result<bool> {
    match out.write_all(data) {
        Ok(()) => Ok(true),
        Err(err) if is_broken_pipe(&err) => Ok(false),
        Err(err) => Err(err),
    }
}
