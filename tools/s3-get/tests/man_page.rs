//! `man/s3-get.1` matches the clap definition (`S3PIPE_UPDATE_MAN=1` rewrites it).

#[test]
fn man_page_is_fresh() {
    s3pipe::man::assert_fresh(
        "s3-get",
        s3_get::command(),
        &s3_get::man_extras(),
        env!("CARGO_MANIFEST_DIR"),
    );
}
