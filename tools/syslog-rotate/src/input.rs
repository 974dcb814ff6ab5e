//! The stdin reader: its own thread, large reads, whole lines handed on through a bounded channel.
//!
//! The channel holds a few buffers only, so when the processor is blocked (S3 behind, spool full)
//! this thread blocks in `send`, stops reading, and the writer of the pipe blocks in turn.

use std::io::Read;
use std::sync::mpsc::SyncSender;

/// Bytes asked of each read.
const READ_SIZE: usize = 256 << 10;

/// What the reader hands the processor.
#[derive(Debug)]
pub enum Input {
    /// Whole lines (the last one may lack its newline at EOF or when it is over-long).
    Data {
        data: Vec<u8>,
        /// When it was read, microseconds since the epoch (the receive time of its lines).
        received: i64,
        /// The first line is the rest of an over-long line cut in the previous buffer.
        continues_long_line: bool,
        /// The last bytes are the start of an over-long line, cut here.
        ends_in_long_line: bool,
    },
    Eof,
    Error(std::io::Error),
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Reads `input` to its end. Stops early when the processor has gone away.
pub fn read(mut input: impl Read, tx: SyncSender<Input>, max_line: usize) {
    let mut carry: Vec<u8> = Vec::new();
    let mut continues = false;
    loop {
        let mut chunk = std::mem::take(&mut carry);
        let start = chunk.len();
        chunk.resize(start + READ_SIZE, 0);
        let n = loop {
            match input.read(&mut chunk[start..]) {
                Ok(n) => break n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    chunk.truncate(start);
                    if !chunk.is_empty() {
                        let _ = tx.send(data(chunk, continues, false));
                    }
                    let _ = tx.send(Input::Error(err));
                    return;
                }
            }
        };
        chunk.truncate(start + n);
        if n == 0 {
            if !chunk.is_empty() {
                let _ = tx.send(data(chunk, continues, false));
            }
            let _ = tx.send(Input::Eof);
            return;
        }
        let long = match memchr::memrchr(b'\n', &chunk[start..]) {
            Some(at) => {
                carry = chunk.split_off(start + at + 1);
                if carry.len() >= max_line {
                    // The line after the last newline is already over-long: hand it on too.
                    chunk.append(&mut carry);
                    true
                } else {
                    false
                }
            }
            None if chunk.len() >= max_line => true,
            None => {
                carry = chunk;
                continue;
            }
        };
        if tx.send(data(chunk, continues, long)).is_err() {
            return;
        }
        continues = long;
    }
}

fn data(data: Vec<u8>, continues_long_line: bool, ends_in_long_line: bool) -> Input {
    Input::Data {
        data,
        received: now_micros(),
        continues_long_line,
        ends_in_long_line,
    }
}
