//! Fuzz target: any bytes, decoded as a `SubmitBatchRequest` protobuf (what
//! a client sends), through the coordinator's request validation. It must
//! never panic, accept only batches within the limits, and refuse everything
//! else with INVALID_ARGUMENT and a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use smsmesh::pb::SubmitBatchRequest;
use smsmesh_coordinator::Config;
use smsmesh_coordinator::submit::validate_submit;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = SubmitBatchRequest::decode(data) else {
        return; // tonic refuses undecodable requests before validation
    };
    let config = Config {
        max_batch_size: 10_000,
        max_messages_per_request: 1_000,
        ..Config::default()
    };
    let explicit = req.messages.len();
    match validate_submit(req, &config) {
        Ok(batch) => {
            assert!(batch.total >= 1 && u64::from(batch.total) <= 10_000);
            assert!(explicit <= 1_000);
        }
        Err(e) => {
            let status = tonic::Status::from(e);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(!status.message().is_empty());
        }
    }
});
