//! Man pages rendered from each tool's clap definition.
//!
//! clap_mangen writes the synopsis and options; the sections operators look for next (examples,
//! exit status, environment) are added here, the exit status table from [`ExitCode::TABLE`] so a
//! page can never disagree with the code. `man/` holds the rendered pages and a test fails when one
//! is stale (`S3PIPE_UPDATE_MAN=1 cargo test` rewrites them).

use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};

use crate::exit::ExitCode;

/// What a tool's page has beyond its clap definition.
#[derive(Debug, Clone, Default)]
pub struct ManExtras {
    /// (what it does, the shell lines), shown in EXAMPLES.
    pub examples: Vec<(&'static str, &'static str)>,
    /// Extra paragraphs for the end of DESCRIPTION (how it works, what is guaranteed).
    pub notes: Vec<&'static str>,
    /// Exit statuses particular to the tool, after the shared table.
    pub exit_notes: Vec<&'static str>,
    /// (variable, meaning) beyond the shared S3 ones.
    pub environment: Vec<(&'static str, &'static str)>,
    /// Whether the tool talks to S3 (adds the S3 environment variables).
    pub uses_s3: bool,
    pub see_also: Vec<&'static str>,
}

/// The environment variables that the S3 client reads.
pub const S3_ENVIRONMENT: &[(&str, &str)] = &[
    (
        "AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL",
        "S3 endpoint when --endpoint-url is not given (MinIO, Garage, ...). A custom endpoint implies path-style addressing and checksums only when required.",
    ),
    (
        "AWS_REGION, AWS_DEFAULT_REGION",
        "region to sign for when --region is not given; us-east-1 when nothing names one.",
    ),
    ("AWS_PROFILE", "profile to use when --profile is not given."),
    (
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN",
        "credentials; otherwise the default chain is tried: profile files, web identity, ECS and EC2 instance metadata. Secrets are never printed.",
    ),
    (
        "AWS_CA_BUNDLE",
        "PEM file of extra certificate authorities, when --ca-bundle is not given.",
    ),
    (
        "AWS_REQUEST_CHECKSUM_CALCULATION, AWS_RESPONSE_CHECKSUM_VALIDATION",
        "when_supported or when_required; set, they override the choice made for custom endpoints.",
    ),
];

/// Renders the whole page for `cmd`.
pub fn render(cmd: clap::Command, extras: &ManExtras) -> Vec<u8> {
    let has_subcommands = cmd.has_subcommands();
    let man = Man::new(cmd).manual("s3pipe manual").source("s3pipe");
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    let mut roff = Roff::new();
    for note in &extras.notes {
        roff.control("PP", [] as [&str; 0]).text([roman(*note)]);
    }
    out.extend(roff.render().into_bytes());
    let _ = man.render_options_section(&mut out);
    if has_subcommands {
        let _ = man.render_subcommands_section(&mut out);
    }

    let mut roff = Roff::new();
    if !extras.examples.is_empty() {
        roff.control("SH", ["EXAMPLES"]);
        for (what, lines) in &extras.examples {
            roff.control("PP", [] as [&str; 0]).text([roman(*what)]);
            roff.control("PP", [] as [&str; 0]);
            roff.control("RS", ["4"]).control("nf", [] as [&str; 0]);
            for line in lines.lines() {
                roff.text([roman(line)]);
            }
            roff.control("fi", [] as [&str; 0])
                .control("RE", [] as [&str; 0]);
        }
    }
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in ExitCode::TABLE {
        roff.control("TP", [] as [&str; 0])
            .text([bold(code.code().to_string())])
            .text([roman(*meaning)]);
    }
    for note in &extras.exit_notes {
        roff.control("PP", [] as [&str; 0]).text([roman(*note)]);
    }
    let mut environment: Vec<(&str, &str)> = extras.environment.clone();
    if extras.uses_s3 {
        environment.extend_from_slice(S3_ENVIRONMENT);
    }
    environment.push(("RUST_LOG", "log filter (tracing syntax, e.g. debug or s3_get=trace); overrides -v and -q. Logs go to stderr."));
    roff.control("SH", ["ENVIRONMENT"]);
    for (name, meaning) in environment {
        roff.control("TP", [] as [&str; 0])
            .text([bold(name)])
            .text([roman(meaning)]);
    }
    if !extras.see_also.is_empty() {
        roff.control("SH", ["SEE ALSO"])
            .text([roman(extras.see_also.join(", "))]);
    }
    out.extend(roff.render().into_bytes());
    out
}

/// Fails (panics, for a test) when `man/<tool>.1` differs from the page rendered now.
///
/// Each tool crate calls this from its own test, so a tool's page is checked with the tool and no
/// crate has to link every tool. `S3PIPE_UPDATE_MAN=1` rewrites the page instead. `manifest_dir`
/// is the calling crate's `CARGO_MANIFEST_DIR`; `man/` is found in the nearest ancestor holding it.
pub fn assert_fresh(tool: &str, cmd: clap::Command, extras: &ManExtras, manifest_dir: &str) {
    let rendered = render(cmd, extras);
    assert!(
        String::from_utf8_lossy(&rendered).contains("EXIT STATUS"),
        "the {tool} page has no EXIT STATUS section"
    );
    let man_dir = std::path::Path::new(manifest_dir)
        .ancestors()
        .map(|dir| dir.join("man"))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| panic!("no man/ directory above {manifest_dir}"));
    let path = man_dir.join(format!("{tool}.1"));
    if std::env::var_os("S3PIPE_UPDATE_MAN").is_some() {
        if let Err(err) = std::fs::write(&path, &rendered) {
            panic!("cannot write {}: {err}", path.display());
        }
        return;
    }
    assert!(
        std::fs::read(&path).ok().as_deref() == Some(rendered.as_slice()),
        "stale man page {}: regenerate with S3PIPE_UPDATE_MAN=1 scripts/test",
        path.display()
    );
}
