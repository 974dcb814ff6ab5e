fn main() {
    snapshot_restore::main()
}
