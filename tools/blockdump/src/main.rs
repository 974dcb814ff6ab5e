fn main() {
    blockdump::main()
}
