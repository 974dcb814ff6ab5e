//! A private certificate authority, as with a MinIO that has its own certificate: `--ca-bundle`
//! and `AWS_CA_BUNDLE` make the tools trust it, and without it they refuse the connection.
//!
//! The HTTPS endpoint is scripts/fault-proxy serving TLS (with no faults) in front of the test
//! server, with a CA and a server certificate for 127.0.0.1 made by openssl for this test only.

use std::path::Path;
use std::process::Command;

use harness::{FaultProxy, new_bucket, object, random_bytes, tool};

/// Makes `ca.pem` and a `server.pem`/`server.key` for 127.0.0.1 signed by it, in `dir`.
fn make_private_ca(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=s3pipe test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}

#[test]
fn private_ca_is_trusted_only_when_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_private_ca(dir.path());
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    let ca = dir.path().join("ca.pem");
    let proxy = FaultProxy::start(&[
        "--error-rate",
        "0",
        "--tls-cert",
        cert.to_str().expect("utf-8 path"),
        "--tls-key",
        key.to_str().expect("utf-8 path"),
    ]);
    assert!(proxy.url.starts_with("https://"), "{}", proxy.url);
    let bucket = new_bucket("tls");
    let url = format!("s3://{bucket}/over-tls");
    let data = random_bytes(6 << 20, 41);

    // Not trusted: the connection is refused, nothing is stored.
    let out = tool("s3-put-multipart")
        .args(["--endpoint-url", &proxy.url, "--max-attempts", "1"])
        .arg(&url)
        .write_stdin(data.clone())
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_lowercase();
    assert!(
        stderr.contains("certificate") || stderr.contains("tls") || stderr.contains("issuer"),
        "the error should name the certificate problem: {stderr}"
    );
    assert_eq!(object(&bucket, "over-tls"), None);

    // Trusted by flag for the upload, by AWS_CA_BUNDLE for the download.
    tool("s3-put-multipart")
        .args(["--endpoint-url", &proxy.url, "--part-size", "5MiB"])
        .arg("--ca-bundle")
        .arg(&ca)
        .arg(&url)
        .write_stdin(data.clone())
        .assert()
        .success();
    assert_eq!(object(&bucket, "over-tls").as_deref(), Some(&data[..]));
    let got = tool("s3-get")
        .args(["--endpoint-url", &proxy.url])
        .env("AWS_CA_BUNDLE", &ca)
        .arg(&url)
        .assert()
        .success();
    assert!(
        got.get_output().stdout == data,
        "s3-get over TLS returned other bytes"
    );
}
