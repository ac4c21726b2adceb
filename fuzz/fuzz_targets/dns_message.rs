#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ztunnel::fuzzing::dns_message(data));
