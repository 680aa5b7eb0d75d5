//! JSON ↔ protobuf throughput (issue 14, item 2): the byte-level transcoder
//! (`JsonCodec::json_to_proto` / `proto_to_json` on a type with a plan) against
//! prost-reflect's `DynamicMessage` path, and against plain `serde_json` on the same JSON
//! (parsing into a `Value` / writing that `Value`) as the practical ceiling.
//!
//! Three messages of one type: small (≈ 200 B of JSON), medium (≈ 4 KiB) and large
//! (≈ 1 MiB: a long repeated field of nested messages, each with its own repeated and nested
//! fields); and a tiny one (≈ 60 B: two strings and an int64, the size of the WebSocket
//! bench's chat messages, where the fixed cost per message is what counts). Throughput is
//! given in bytes of JSON for both directions, so the columns compare.
//!
//! `cargo bench --bench transcode` (add `-- large` to run one size).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use std::hint::black_box;
use switchboard::config::JsonConfig;
use switchboard::schema::Schema;
use switchboard::transcode::{JsonCodec, MessageType};

const PROTO: &str = r#"
syntax = "proto3";
package bench.v1;
import "google/protobuf/timestamp.proto";

enum Status { STATUS_UNSPECIFIED = 0; PENDING = 1; SHIPPED = 2; DELIVERED = 3; }

message Money { string currency = 1; int64 units = 2; int32 nanos = 3; }

message Item {
  string sku = 1;
  string title = 2;
  int32 quantity = 3;
  Money price = 4;
  repeated string tags = 5;
  Status status = 6;
  double weight_kg = 7;
  bool gift = 8;
  repeated Item parts = 9;
  repeated int64 warehouse_ids = 10;
}

message Order {
  string id = 1;
  string customer_id = 2;
  repeated Item items = 3;
  Money total = 4;
  Status status = 5;
  google.protobuf.Timestamp created_at = 6;
  string note = 7;
}
"#;

/// The `Order` type (small, medium, large) and the `Money` type (tiny).
fn bench_types() -> (MessageType, MessageType) {
    let dir = std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("bench.proto"), PROTO).expect("write proto");
    let schema = Schema::load(std::slice::from_ref(&dir), &[]).expect("schema");
    std::fs::remove_dir_all(&dir).ok();
    let ty = |name: &str| {
        let ty = MessageType::new(schema.pool.get_message_by_name(name).expect(name));
        assert!(
            ty.has_plan(),
            "the bench types must take the byte-level path"
        );
        ty
    };
    (ty("bench.v1.Order"), ty("bench.v1.Money"))
}

fn item(i: usize, parts: usize) -> Value {
    json!({
        "sku": format!("SKU-{i:06}"),
        "title": format!("Stainless steel widget, size {}", i % 7),
        "quantity": (i % 5) + 1,
        "price": {"currency": "EUR", "units": format!("{}", 10 + i % 90), "nanos": 990_000_000},
        "tags": ["hardware", "steel"],
        "status": "SHIPPED",
        "weightKg": 0.25 + (i % 10) as f64,
        "gift": i.is_multiple_of(3),
        "parts": (0..parts).map(|p| item(i * 10 + p, 0)).collect::<Vec<_>>(),
        "warehouseIds": [format!("{}", 1000 + i), "7"],
    })
}

/// An order whose JSON is about `target` bytes (the small one: one plain item).
fn order(target: usize) -> Vec<u8> {
    if target < 1000 {
        let small = json!({"id": "ord-1", "customerId": "cust-42",
            "items": [{"sku": "SKU-1", "title": "Widget", "quantity": 2,
                       "price": {"currency": "EUR", "units": "10", "nanos": 500000000}}],
            "status": "PENDING", "createdAt": "2026-12-02T10:00:00Z", "note": "door"});
        return serde_json::to_vec(&small).expect("json");
    }
    // Large messages nest: each item carries two parts of its own.
    let parts = if target > 100_000 { 2 } else { 0 };
    let mut items = Vec::new();
    let mut size = 0;
    while size < target {
        let next = item(items.len(), parts);
        size += serde_json::to_vec(&next).expect("json").len() + 1;
        items.push(next);
    }
    let order = json!({
        "id": "ord-000123",
        "customerId": "cust-42",
        "items": items,
        "total": {"currency": "EUR", "units": "1999", "nanos": 0},
        "status": "PENDING",
        "createdAt": "2026-12-02T10:00:00Z",
        "note": "leave at the door",
    });
    serde_json::to_vec(&order).expect("json")
}

fn bench(c: &mut Criterion) {
    let (order_type, money_type) = bench_types();
    let codec = JsonCodec::new(&JsonConfig {
        // What prost-reflect and the byte path both print by default in this gateway.
        emit_defaults: false,
        ..Default::default()
    });
    let tiny = br#"{"currency":"hello over a websocket","units":"12345","nanos":7}"#.to_vec();
    let cases = [
        ("tiny", &money_type, tiny, 60),
        ("small", &order_type, order(200), 200),
        ("medium", &order_type, order(4 << 10), 4 << 10),
        ("large", &order_type, order(1 << 20), 1 << 20),
    ];
    for (name, ty, json, target) in cases {
        let mut ours = Vec::new();
        codec
            .json_to_proto(ty, &json, &mut ours)
            .expect("transcodes");
        // Both paths agree on the input (the differential tests check this in general).
        let message = codec.decode(ty.descriptor(), &json).expect("decodes");
        // The responses are what a backend sends: fields in number order, as protobuf
        // encoders write them. (The byte path writes a request's fields in the JSON's key
        // order, here alphabetical; the message is the same.)
        let proto = prost::Message::encode_to_vec(&message);
        let reencoded = prost::Message::encode_to_vec(&ty.decode(&ours).expect("decodes"));
        assert_eq!(reencoded, proto);
        let back = codec.proto_to_json(ty, &proto).expect("to json");
        assert_eq!(back, codec.encode(&message).expect("encodes"));
        let value: Value = serde_json::from_slice(&json).expect("json");
        let bytes = json.len() as u64;

        let mut group = c.benchmark_group(format!("json_to_proto/{name}"));
        group.throughput(Throughput::Bytes(bytes));
        if target > 100_000 {
            group.sample_size(20);
        }
        group.bench_function(BenchmarkId::new("byte_path", json.len()), |b| {
            let mut out = Vec::with_capacity(proto.len());
            b.iter(|| {
                out.clear();
                codec
                    .json_to_proto(ty, black_box(&json), &mut out)
                    .expect("transcodes");
                black_box(&out);
            })
        });
        group.bench_function(BenchmarkId::new("dynamic_message", json.len()), |b| {
            let mut out = Vec::with_capacity(proto.len());
            b.iter(|| {
                out.clear();
                let message = codec.decode(ty.descriptor(), black_box(&json)).expect("ok");
                prost::Message::encode(&message, &mut out).expect("encodes");
                black_box(&out);
            })
        });
        group.bench_function(BenchmarkId::new("serde_json_value", json.len()), |b| {
            b.iter(|| black_box(serde_json::from_slice::<Value>(black_box(&json)).expect("ok")))
        });
        group.finish();

        let mut group = c.benchmark_group(format!("proto_to_json/{name}"));
        group.throughput(Throughput::Bytes(bytes));
        if target > 100_000 {
            group.sample_size(20);
        }
        group.bench_function(BenchmarkId::new("byte_path", json.len()), |b| {
            b.iter(|| black_box(codec.proto_to_json(ty, black_box(&proto)).expect("ok")))
        });
        group.bench_function(BenchmarkId::new("dynamic_message", json.len()), |b| {
            b.iter(|| {
                let message = ty.decode(black_box(&proto)).expect("decodes");
                black_box(codec.encode(&message).expect("encodes"))
            })
        });
        group.bench_function(BenchmarkId::new("serde_json_value", json.len()), |b| {
            b.iter(|| black_box(serde_json::to_vec(black_box(&value)).expect("ok")))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
