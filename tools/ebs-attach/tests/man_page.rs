//! `man/ebs-attach.1` matches the clap definition (`S3PIPE_UPDATE_MAN=1` rewrites it).

#[test]
fn man_page_is_fresh() {
    s3pipe::man::assert_fresh(
        "ebs-attach",
        ebs_attach::command(),
        &ebs_attach::man_extras(),
        env!("CARGO_MANIFEST_DIR"),
    );
}
