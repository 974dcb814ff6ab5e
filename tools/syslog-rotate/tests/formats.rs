//! Templates and macros for the three input formats, malformed input counted and kept, and the
//! one-line errors for bad command lines and missing buckets.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[test]
fn syslog_lines_render_fields_and_message_time_into_keys_and_text() {
    let bucket = new_bucket("syslog");
    let input = b"<38>Mar  1 10:02:03 web1 sshd[812]: Accepted key\n\
<165>1 2026-03-02T04:05:06.789Z db1 postgres 4242 ID47 [meta x=\"]\"] checkpoint done\n\
Mar  1 10:02:04 web1 sshd[813]: Closed\n";
    let mut args = base_args(&bucket, "${HOST}/${PROGRAM}/${S_YEAR}${S_MONTH}${S_DAY}");
    args.extend([
        "--input-format",
        "syslog",
        "--template",
        "${ISODATE} ${FACILITY}.${SEVERITY} ${MSGHDR}${MESSAGE}\\n",
    ]);
    let (status, events, stderr) = run(&args, input);
    assert!(status.success(), "{stderr}");
    assert_eq!(
        keys(&bucket),
        ["db1/postgres/20260302.log", "web1/sshd/20260301.log"]
    );
    assert_eq!(
        String::from_utf8(decoded(&bucket, "web1/sshd/20260301.log")).unwrap(),
        "2026-03-01T10:02:03+00:00 auth.info sshd[812]: Accepted key\n\
2026-03-01T10:02:04+00:00 . sshd[813]: Closed\n"
    );
    assert_eq!(
        String::from_utf8(decoded(&bucket, "db1/postgres/20260302.log")).unwrap(),
        "2026-03-02T04:05:06+00:00 local4.notice postgres[4242]: checkpoint done\n"
    );
    assert_eq!(summary(&events)["unparsed"], 0);
}

#[test]
fn json_lines_use_fields_by_path_and_journald_time() {
    let bucket = new_bucket("json");
    let input = br#"{"MESSAGE":"started","_HOSTNAME":"h1","SYSLOG_IDENTIFIER":"nginx","__REALTIME_TIMESTAMP":"1772359323000000","req":{"status":200}}
{"message":"plain","host":"h2","SYSLOG_IDENTIFIER":"cron","time":"2026-03-02T00:00:00Z"}
"#;
    let mut args = base_args(&bucket, "app/${.SYSLOG_IDENTIFIER}-${YEAR}");
    args.extend([
        "--input-format",
        "json",
        "--template",
        "${HOST} ${.req.status} ${MESSAGE}\\n",
    ]);
    let (status, _, stderr) = run(&args, input);
    assert!(status.success(), "{stderr}");
    assert_eq!(keys(&bucket), ["app/cron-2026.log", "app/nginx-2026.log"]);
    assert_eq!(decoded(&bucket, "app/nginx-2026.log"), b"h1 200 started\n");
    assert_eq!(decoded(&bucket, "app/cron-2026.log"), b"h2  plain\n");
}

#[test]
fn plain_lines_use_the_receive_time() {
    let bucket = new_bucket("plain");
    let (status, events, stderr) = run(
        &base_args(&bucket, "p/${R_YEAR}/${YEAR}"),
        b"a\r\nb\nno newline at the end",
    );
    assert!(status.success(), "{stderr}");
    let year = chrono_year();
    let key = format!("p/{year}/{year}.log");
    assert_eq!(keys(&bucket), vec![key.clone()]);
    assert_eq!(decoded(&bucket, &key), b"a\nb\nno newline at the end\n");
    assert_eq!(stored(&events)[0]["lines"], 3);
}

fn chrono_year() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y"])
        .output()
        .expect("date");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn malformed_input_is_counted_and_kept() {
    let bucket = new_bucket("malformed");
    let mut input = Vec::new();
    input.extend_from_slice(b"<13>Mar  1 10:00:00 h app: fine\n");
    input.extend_from_slice(b"not syslog at all\n");
    input.extend_from_slice(b"<13>Mar  1 10:00:01 h app: bad \xff\xfe bytes\n");
    let long = vec![b'L'; 250];
    input.extend_from_slice(&long);
    input.push(b'\n');
    let mut args = base_args(&bucket, "m");
    args.extend([
        "--input-format",
        "rfc3164",
        "--max-line-length",
        "100",
        "--template",
        "${MESSAGE}\\n",
    ]);
    let (status, events, stderr) = run(&args, &input);
    assert!(status.success(), "{stderr}");
    let summary = summary(&events);
    assert_eq!(summary["unparsed"], 4, "{summary}"); // "not syslog" and the three pieces
    assert_eq!(summary["invalid_utf8"], 1);
    assert_eq!(summary["long_lines"], 1);
    assert_eq!(summary["lines"], 6);
    let mut expected = b"fine\nnot syslog at all\nbad \xff\xfe bytes\n".to_vec();
    for piece in long.chunks(100) {
        expected.extend_from_slice(piece);
        expected.push(b'\n');
    }
    assert_eq!(decoded(&bucket, "m.log"), expected);
    assert_eq!(stored(&events)[0]["malformed_lines"], 5);
}

#[test]
fn over_long_lines_across_read_buffers_are_kept_whole() {
    let bucket = new_bucket("longread");
    // One 600 KiB line (longer than a 256 KiB read) between short ones.
    let mut input = b"first\n".to_vec();
    let long: Vec<u8> = (0..600 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    input.extend_from_slice(&long);
    input.extend_from_slice(b"\nlast\n");
    let (status, events, stderr) = run(&base_args(&bucket, "l"), &input);
    assert!(status.success(), "{stderr}");
    let stored_text = decoded(&bucket, "l.log");
    // Pieces of 64 KiB, each followed by a newline; nothing lost, nothing reordered.
    let without_newlines: Vec<u8> = stored_text
        .iter()
        .copied()
        .filter(|b| *b != b'\n')
        .collect();
    let expected: Vec<u8> = input.iter().copied().filter(|b| *b != b'\n').collect();
    assert_eq!(without_newlines, expected);
    assert!(stored_text.starts_with(b"first\n"));
    assert!(stored_text.ends_with(b"\nlast\n"));
    assert_eq!(summary(&events)["long_lines"], 1);
}

#[test]
fn missing_bucket_and_bad_templates_fail_with_one_line() {
    let (status, events, stderr) = run(&base_args("no-such-bucket-syslog-rotate", "k"), b"x\n");
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(events.is_empty());
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("syslog-rotate: ") && last.contains("no-such-bucket-syslog-rotate"),
        "{stderr}"
    );

    let bucket = new_bucket("usage");
    let (status, _, stderr) = run(&base_args(&bucket, "${NOPE}"), b"x\n");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown macro 'NOPE'"), "{stderr}");
    let mut args = base_args(&bucket, "k");
    args.extend(["--chunk-size", "1MiB"]);
    let (status, _, stderr) = run(&args, b"x\n");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--chunk-size"), "{stderr}");
    assert!(keys(&bucket).is_empty());
}
