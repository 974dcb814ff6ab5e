fn main() {
    ebs_attach::main()
}
