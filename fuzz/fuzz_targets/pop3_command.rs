#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cluster::fuzzing::pop3_command(data));
