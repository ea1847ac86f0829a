//! The few etcd v3 gRPC messages the watch uses, and Envoy's `GrpcService`
//! that names the cluster of a gRPC call. Written by hand from the field
//! numbers of etcd's `rpc.proto` and `kv.proto` (3.4) and Envoy's
//! `grpc_service.proto`; `prost` encodes and decodes them. Fields graylane
//! never reads are left out: protobuf skips unknown fields.

use prost::Message;

/// `etcdserverpb.Watch/Watch`: one bidirectional stream.
pub const WATCH_SERVICE: &str = "etcdserverpb.Watch";
pub const WATCH_METHOD: &str = "Watch";
/// `etcdserverpb.KV/Range`: the read before a watch.
pub const KV_SERVICE: &str = "etcdserverpb.KV";
pub const RANGE_METHOD: &str = "Range";

#[derive(Clone, PartialEq, Message)]
pub struct ResponseHeader {
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
    #[prost(int64, tag = "4")]
    pub count: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct WatchRequest {
    #[prost(oneof = "WatchRequestUnion", tags = "1, 2, 3")]
    pub request: Option<WatchRequestUnion>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum WatchRequestUnion {
    #[prost(message, tag = "1")]
    Create(WatchCreateRequest),
    #[prost(message, tag = "2")]
    Cancel(WatchCancelRequest),
    #[prost(message, tag = "3")]
    Progress(WatchProgressRequest),
}

#[derive(Clone, PartialEq, Message)]
pub struct WatchCreateRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub start_revision: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct WatchCancelRequest {
    #[prost(int64, tag = "1")]
    pub watch_id: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct WatchProgressRequest {}

#[derive(Clone, PartialEq, Message)]
pub struct WatchResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

/// `mvccpb.Event`; `kind` 0 is a put, 1 a delete.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
}

pub const EVENT_DELETE: i32 = 1;

/// Envoy's `config.core.v3.GrpcService` with only `envoy_grpc`: what a
/// proxy-wasm gRPC call names its upstream by. Envoy also takes a bare
/// cluster name, but only when the bytes do not happen to parse as this
/// message; sending the message leaves nothing to chance.
#[derive(Clone, PartialEq, Message)]
pub struct GrpcService {
    #[prost(message, optional, tag = "1")]
    pub envoy_grpc: Option<EnvoyGrpc>,
}

#[derive(Clone, PartialEq, Message)]
pub struct EnvoyGrpc {
    #[prost(string, tag = "1")]
    pub cluster_name: String,
    #[prost(string, tag = "2")]
    pub authority: String,
}

/// The upstream bytes for a gRPC call to `cluster`.
pub fn grpc_service(cluster: &str, authority: &str) -> Vec<u8> {
    GrpcService {
        envoy_grpc: Some(EnvoyGrpc {
            cluster_name: cluster.to_string(),
            authority: authority.to_string(),
        }),
    }
    .encode_to_vec()
}

/// The end of the range of every key starting with `prefix` (etcd's
/// convention: the prefix with its last byte below 0xff incremented; all
/// keys from the prefix on when every byte is 0xff).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_create_has_etcds_field_numbers() {
        let request = WatchRequest {
            request: Some(WatchRequestUnion::Create(WatchCreateRequest {
                key: b"/k".to_vec(),
                range_end: Vec::new(),
                start_revision: 5,
            })),
        };
        // field 1 (len 6) { field 1 bytes "/k", field 3 varint 5 }
        assert_eq!(
            request.encode_to_vec(),
            vec![0x0a, 6, 0x0a, 2, b'/', b'k', 0x18, 5]
        );
        let progress = WatchRequest {
            request: Some(WatchRequestUnion::Progress(WatchProgressRequest {})),
        };
        assert_eq!(progress.encode_to_vec(), vec![0x1a, 0]);
    }

    #[test]
    fn watch_response_reads_events_and_skips_unknown_fields() {
        let response = WatchResponse {
            header: Some(ResponseHeader { revision: 9 }),
            watch_id: 3,
            events: vec![Event {
                kind: 0,
                kv: Some(KeyValue {
                    key: b"/k".to_vec(),
                    mod_revision: 9,
                    value: b"{}".to_vec(),
                }),
            }],
            ..Default::default()
        };
        let mut bytes = response.encode_to_vec();
        // raft_term (header field 4) is not ours; a field 15 varint neither.
        bytes.extend_from_slice(&[0x78, 1]);
        assert_eq!(WatchResponse::decode(bytes.as_slice()).unwrap(), response);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_range_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff"), vec![0]);
    }
}
