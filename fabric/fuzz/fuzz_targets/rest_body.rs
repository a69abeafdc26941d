#![no_main]
//! See `weft_fabric::fuzzing::rest_body`.

libfuzzer_sys::fuzz_target!(init: weft_fabric::fuzzing::init(), |data: &[u8]| {
    weft_fabric::fuzzing::rest_body(data);
});
