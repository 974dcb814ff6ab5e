//! The checked-in man pages match the clap definitions (`S3PIPE_UPDATE_MAN=1` rewrites them).

use harness::repo_root;

#[test]
fn man_pages_are_fresh() {
    let pages = [
        (
            "s3-put-multipart",
            s3pipe::man::render(s3_put_multipart::command(), &s3_put_multipart::man_extras()),
        ),
        (
            "s3-get",
            s3pipe::man::render(s3_get::command(), &s3_get::man_extras()),
        ),
    ];
    let update = std::env::var_os("S3PIPE_UPDATE_MAN").is_some();
    let mut stale = Vec::new();
    for (tool, rendered) in pages {
        let path = repo_root().join("man").join(format!("{tool}.1"));
        assert!(String::from_utf8_lossy(&rendered).contains("EXIT STATUS"));
        if update {
            std::fs::write(&path, &rendered).expect("write man page");
        } else if std::fs::read(&path).ok().as_deref() != Some(rendered.as_slice()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale man pages {stale:?}: regenerate with S3PIPE_UPDATE_MAN=1 scripts/test"
    );
}
