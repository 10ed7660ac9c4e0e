//! Protobuf messages to and from JSON, by the proto3 JSON mapping, with the
//! descriptors the coordinator serves for reflection: the REST face needs no
//! second definition of any message.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use tonic::Status;

/// Every `smsmesh.v1` message.
static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(smsmesh::FILE_DESCRIPTOR_SET).expect("the built-in descriptors decode")
});

/// The descriptor of `smsmesh.v1.<name>`.
pub(super) fn descriptor(name: &str) -> prost_reflect::MessageDescriptor {
    POOL.get_message_by_name(&format!("smsmesh.v1.{name}"))
        .unwrap_or_else(|| panic!("smsmesh.v1.{name} is a message of proto/"))
}

/// Reads `smsmesh.v1.<name>` from JSON. Field names may be the proto's
/// (`batch_id`) or their JSON form (`batchId`); enums by name or number;
/// 64-bit numbers as numbers or strings. An unknown field is an error, so a
/// misspelt one is not silently ignored.
pub(super) fn decode<T: Message + Default>(name: &str, json: &[u8]) -> Result<T, Status> {
    let desc = descriptor(name);
    let mut de = serde_json::Deserializer::from_slice(json);
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let message = DynamicMessage::deserialize_with_options(desc, &mut de, &options)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| Status::invalid_argument(format!("the body is not a {name} in JSON: {e}")))?;
    T::decode(message.encode_to_vec().as_slice())
        .map_err(|e| Status::internal(format!("a {name} read from JSON did not decode: {e}")))
}

/// Writes `smsmesh.v1.<name>` as JSON: the proto's field names, every field
/// (zeros and empty lists too, so a client need not know the defaults),
/// enums by name, 64-bit numbers as JSON numbers.
pub(super) fn encode<T: Message>(name: &str, message: &T) -> Vec<u8> {
    let dynamic = DynamicMessage::decode(descriptor(name), message.encode_to_vec().as_slice())
        .expect("a message encodes as its own descriptor");
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false)
        .stringify_64_bit_integers(false);
    let mut out = serde_json::Serializer::new(Vec::new());
    dynamic
        .serialize_with_options(&mut out, &options)
        .expect("a message serializes to JSON");
    out.into_inner()
}

/// A query string (and values from the path) as the JSON of message `name`:
/// each parameter names a field; a repeated field may be given more than
/// once or as a comma-separated list.
pub(super) fn from_query(
    name: &str,
    query: Option<&str>,
    path: &[(&str, String)],
) -> Result<Vec<u8>, Status> {
    let desc = descriptor(name);
    let mut object = serde_json::Map::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let field = desc
            .get_field_by_name(&key)
            .or_else(|| desc.get_field_by_json_name(&key))
            .filter(|f| !path.iter().any(|(p, _)| *p == f.name()))
            .ok_or_else(|| {
                let known: Vec<String> = desc
                    .fields()
                    .map(|f| f.name().to_string())
                    .filter(|n| !path.iter().any(|(p, _)| p == n))
                    .collect();
                Status::invalid_argument(format!(
                    "unknown query parameter `{key}`: this call takes {}",
                    known.join(", ")
                ))
            })?;
        let name = field.name().to_string();
        if field.is_list() {
            let list = object
                .entry(name)
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(list) = list {
                list.extend(
                    value
                        .split(',')
                        .filter(|v| !v.is_empty())
                        .map(|v| serde_json::Value::String(v.to_string())),
                );
            }
        } else if object
            .insert(name, serde_json::Value::String(value.into_owned()))
            .is_some()
        {
            return Err(Status::invalid_argument(format!(
                "query parameter `{key}` is given twice"
            )));
        }
    }
    for (field, value) in path {
        object.insert(field.to_string(), serde_json::Value::String(value.clone()));
    }
    Ok(serde_json::to_vec(&object).expect("a JSON object serializes"))
}

#[cfg(test)]
mod tests {
    use smsmesh::pb;

    use super::*;

    #[test]
    fn a_message_goes_to_json_and_back() {
        let m = pb::MessageStatus {
            message_id: "00000000000000ab.3".into(),
            state: pb::MessageState::Sent as i32,
            accepted_unix_ms: 1_700_000_000_000,
            ..Default::default()
        };
        let json: serde_json::Value = serde_json::from_slice(&encode("MessageStatus", &m)).unwrap();
        assert_eq!(json["state"], "MESSAGE_STATE_SENT");
        assert_eq!(json["accepted_unix_ms"], 1_700_000_000_000u64);
        assert_eq!(json["attempts"], 0, "zeros are written");
        let back: pb::MessageStatus =
            decode("MessageStatus", &serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let e = decode::<pb::SubmitBatchRequest>("SubmitBatchRequest", br#"{"mesages":[]}"#)
            .unwrap_err();
        assert!(e.message().contains("mesages"), "{e}");
        let e = decode::<pb::ListBatchesRequest>("ListBatchesRequest", br#"{"page_size":"x"}"#)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let ok: pb::SubmitBatchRequest = decode(
            "SubmitBatchRequest",
            br#"{"messages":[{"to":"+15550001","body":"hi"}],"maxAttempts":2}"#,
        )
        .unwrap();
        assert_eq!((ok.messages.len(), ok.max_attempts), (1, Some(2)));
    }

    #[test]
    fn a_query_names_fields_and_lists_repeat() {
        let json = from_query(
            "ListMessagesRequest",
            Some("states=MESSAGE_STATE_FAILED,MESSAGE_STATE_SENT&page_size=5"),
            &[("batch_id", "00000000000000ab".into())],
        )
        .unwrap();
        let req: pb::ListMessagesRequest = decode("ListMessagesRequest", &json).unwrap();
        assert_eq!(req.states.len(), 2);
        assert_eq!(
            (req.page_size, req.batch_id.as_str()),
            (5, "00000000000000ab")
        );
        let e = from_query(
            "ListMessagesRequest",
            Some("batch_id=x"),
            &[("batch_id", "y".into())],
        )
        .unwrap_err();
        assert!(e.message().contains("this call takes states"), "{e}");
        let e = from_query("ListBatchesRequest", Some("page_size=1&page_size=2"), &[]).unwrap_err();
        assert!(e.message().contains("twice"), "{e}");
    }
}
