#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xds::fuzzing::grpc_messages(data));
