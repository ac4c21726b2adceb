#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hbone::fuzzing::http2_connection(data));
