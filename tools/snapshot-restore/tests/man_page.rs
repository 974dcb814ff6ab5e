//! `man/snapshot-restore.1` matches the clap definition (`S3PIPE_UPDATE_MAN=1` rewrites it).

#[test]
fn man_page_is_fresh() {
    s3pipe::man::assert_fresh(
        "snapshot-restore",
        snapshot_restore::command(),
        &snapshot_restore::man_extras(),
        env!("CARGO_MANIFEST_DIR"),
    );
}
