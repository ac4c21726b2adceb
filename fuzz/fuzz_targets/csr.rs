#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| istiod_lite::fuzzing::csr(data));
