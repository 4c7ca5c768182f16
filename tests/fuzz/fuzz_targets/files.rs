#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pgring_fuzz::files(data));
