fn main() {
    s3_get::main()
}
