//! The gateway's parser of browser frames: any text a socket sends is a frame or a clear error,
//! never a panic, and the error code is one the protocol documents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onair_gateway::fuzzing::parse_client_frame;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = parse_client_frame(text) {
        assert!(!e.message.is_empty(), "an error without a message");
        assert_eq!(onair_core::ErrorCode::from_wire(e.code.as_str()), e.code, "a code off the protocol");
    }
});
