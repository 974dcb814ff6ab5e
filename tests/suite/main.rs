//! The workspace integration suite: one test binary, so one link and one shared S3 server.

mod errors;
mod faults;
mod round_trip;
mod safety;
mod tls;
