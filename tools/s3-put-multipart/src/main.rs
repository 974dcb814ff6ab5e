fn main() {
    s3_put_multipart::main()
}
