fn main() {
    tape_changer::main()
}
