fn main() {
    syslog_rotate::main()
}
