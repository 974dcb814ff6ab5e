//! `man/s3-put-multipart.1` matches the clap definition (`S3PIPE_UPDATE_MAN=1` rewrites it).

#[test]
fn man_page_is_fresh() {
    s3pipe::man::assert_fresh(
        "s3-put-multipart",
        s3_put_multipart::command(),
        &s3_put_multipart::man_extras(),
        env!("CARGO_MANIFEST_DIR"),
    );
}
