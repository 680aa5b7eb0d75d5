//! Smoke test of the test backends themselves (demo shop and echo server), called with the
//! generated tonic clients, so gateway test failures can be told apart from backend bugs.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Request};

use support::echo;
use support::shop::{self, pb};

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

async fn start_shop() -> shop::Shop {
    shop::start(IpAddr::V4(Ipv4Addr::LOCALHOST), None)
        .await
        .expect("start shop")
}

#[tokio::test]
async fn catalog_get_product_and_not_found_details() {
    use pb::shop::catalog::v1::GetProductRequest;
    use pb::shop::catalog::v1::catalog_service_client::CatalogServiceClient;

    let shop = start_shop().await;
    let mut client = CatalogServiceClient::new(channel(shop.catalog).await);

    let product = client
        .get_product(GetProductRequest { id: "1".into() })
        .await
        .expect("GetProduct 1")
        .into_inner();
    assert_eq!(product.sku, "SKU-001");
    assert_eq!(product.name, "Espresso Machine");
    let price = product.price.expect("price");
    assert_eq!(
        (price.currency_code.as_str(), price.units, price.nanos),
        ("USD", 199, 990_000_000)
    );
    assert_eq!(product.thumbnail_url, "https://img.shop.example/1.png");

    let status = client
        .get_product(GetProductRequest { id: "nope".into() })
        .await
        .expect_err("GetProduct nope");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "product nope not found");
    let details = pb::google::rpc::Status::decode(status.details()).expect("google.rpc.Status");
    assert_eq!(details.code, Code::NotFound as i32);
    let info: pb::google::rpc::ErrorInfo = details.details[0].to_msg().expect("ErrorInfo");
    assert_eq!(info.reason, "PRODUCT_NOT_FOUND");
    assert_eq!(info.domain, "catalog.shop.example");
    assert_eq!(info.metadata.get("id").map(String::as_str), Some("nope"));

    assert_eq!(shop.counters.catalog.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn catalog_watch_price_streams_and_notices_cancel() {
    use pb::shop::catalog::v1::WatchPriceRequest;
    use pb::shop::catalog::v1::catalog_service_client::CatalogServiceClient;

    let shop = start_shop().await;
    let mut client = CatalogServiceClient::new(channel(shop.catalog).await);

    let mut stream = client
        .watch_price(WatchPriceRequest {
            id: "1".into(),
            max_updates: 3,
            interval_ms: 10,
        })
        .await
        .expect("WatchPrice")
        .into_inner();
    let mut sequences = Vec::new();
    let mut prices = Vec::new();
    while let Some(update) = stream.message().await.expect("update") {
        sequences.push(update.sequence);
        prices.push(update.price.expect("price"));
    }
    assert_eq!(sequences, [1, 2, 3]);
    assert_ne!(prices[0], prices[2], "the price changes");
    assert_eq!(shop.counters.watch_cancelled.load(Ordering::Relaxed), 0);

    // Unknown id fails before any message.
    let status = client
        .watch_price(WatchPriceRequest {
            id: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("WatchPrice nope");
    assert_eq!(status.code(), Code::NotFound);

    // Dropping the stream after one update is observed by the server.
    let mut stream = client
        .watch_price(WatchPriceRequest {
            id: "2".into(),
            max_updates: 100,
            interval_ms: 20,
        })
        .await
        .expect("WatchPrice")
        .into_inner();
    stream.message().await.expect("first update");
    drop(stream);
    let cancelled = wait_for(|| shop.counters.watch_cancelled.load(Ordering::Relaxed) == 1).await;
    assert!(cancelled, "watch_cancelled was not incremented");
}

#[tokio::test]
async fn other_shop_services_answer() {
    use pb::shop::inventory::v1::GetStockRequest;
    use pb::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
    use pb::shop::orders::v1::order_service_client::OrderServiceClient;
    use pb::shop::orders::v1::{OrderItem, OrderStatus, PlaceOrderRequest};
    use pb::shop::reviews::v1::ListReviewsRequest;
    use pb::shop::reviews::v1::review_service_client::ReviewServiceClient;

    let shop = start_shop().await;

    let mut reviews = ReviewServiceClient::new(channel(shop.reviews).await);
    let list = reviews
        .list_reviews(ListReviewsRequest {
            product_id: "1".into(),
            page_size: 0,
        })
        .await
        .expect("ListReviews")
        .into_inner();
    assert_eq!(list.reviews.len(), 3);
    assert!(list.average_rating > 0.0);
    let status = reviews
        .list_reviews(ListReviewsRequest {
            product_id: "boom".into(),
            page_size: 0,
        })
        .await
        .expect_err("ListReviews boom");
    assert_eq!(status.code(), Code::Unavailable);

    let mut inventory = InventoryServiceClient::new(channel(shop.inventory).await);
    let stock = inventory
        .get_stock(GetStockRequest {
            sku: "SKU-001".into(),
        })
        .await
        .expect("GetStock")
        .into_inner();
    assert_eq!((stock.available, stock.warehouse.as_str()), (33, "AMS-1"));

    let mut orders = OrderServiceClient::new(channel(shop.orders).await);
    let mut request = Request::new(PlaceOrderRequest {
        items: vec![OrderItem {
            product_id: "1".into(),
            quantity: 2,
        }],
        note: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-user-id", "user-42".parse().expect("metadata value"));
    let order = orders
        .place_order(request)
        .await
        .expect("PlaceOrder")
        .into_inner();
    assert_eq!(order.id, "ord-1");
    assert_eq!(order.user_id, "user-42");
    assert_eq!(order.status(), OrderStatus::Accepted);
    assert_eq!(order.total_units, 398);
    let status = orders
        .place_order(PlaceOrderRequest::default())
        .await
        .expect_err("empty order");
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = pb::google::rpc::Status::decode(status.details()).expect("google.rpc.Status");
    let bad: pb::google::rpc::BadRequest = details.details[0].to_msg().expect("BadRequest");
    assert_eq!(bad.field_violations[0].field, "items");

    let counters = &shop.counters;
    assert_eq!(counters.reviews.load(Ordering::Relaxed), 2);
    assert_eq!(counters.inventory.load(Ordering::Relaxed), 1);
    assert_eq!(counters.orders.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn chat_replies_as_messages_arrive() {
    use pb::shop::chat::v1::ChatMessage;
    use pb::shop::chat::v1::chat_service_client::ChatServiceClient;

    let shop = start_shop().await;
    let mut client = ChatServiceClient::new(channel(shop.chat).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .converse(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("Converse")
        .into_inner();
    for sequence in 1..=2 {
        let message = ChatMessage {
            user: "ann".into(),
            text: format!("hi {sequence}"),
            sequence,
        };
        tx.send(message).await.expect("send");
        // The reply must come while our side of the stream is still open.
        let reply = replies.message().await.expect("reply").expect("a reply");
        assert_eq!(reply.user, "support");
        assert_eq!(reply.text, format!("echo: hi {sequence}"));
        assert_eq!(reply.sequence, sequence);
    }
    drop(tx);
    assert!(replies.message().await.expect("end").is_none());
    assert_eq!(shop.counters.chat.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn echo_returns_request_and_trailer() {
    use echo::pb::test::echo::v1::EchoMessage;
    use echo::pb::test::echo::v1::echo_service_client::EchoServiceClient;

    let server = echo::start().await;
    let mut client = EchoServiceClient::new(channel(server.addr).await);
    let sent = EchoMessage {
        id: "42".into(),
        big: i64::MAX,
        tags: vec!["a".into(), "b".into()],
        ..Default::default()
    };
    let mut request = Request::new(sent.clone());
    request
        .metadata_mut()
        .insert("x-request-id", "req-1".parse().expect("metadata value"));
    let response = client.get(request).await.expect("Get");
    assert_eq!(response.get_ref(), &sent);
    let metadata = response.metadata();
    assert_eq!(
        metadata
            .get("x-echo-x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-1")
    );
    assert_eq!(
        metadata.get("x-echo-trailer").and_then(|v| v.to_str().ok()),
        Some("done")
    );
    let seen = server
        .last_metadata
        .lock()
        .expect("lock")
        .clone()
        .expect("metadata");
    assert_eq!(
        seen.get("x-request-id").map(|v| v.as_bytes()),
        Some(&b"req-1"[..])
    );

    // Forced failure with details.
    let mut request = Request::new(sent.clone());
    request
        .metadata_mut()
        .insert("x-echo-fail", "9".parse().expect("metadata value"));
    let status = client.get(request).await.expect_err("forced failure");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "forced");
    let details = pb::google::rpc::Status::decode(status.details()).expect("google.rpc.Status");
    let info: pb::google::rpc::ErrorInfo = details.details[0].to_msg().expect("ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("FORCED", "echo.test")
    );
    assert_eq!(
        status
            .metadata()
            .get("x-echo-trailer")
            .and_then(|v| v.to_str().ok()),
        Some("done")
    );

    // Stream: `small` copies, then the failure in `fail_code`.
    let mut stream = client
        .stream(EchoMessage {
            id: "s".into(),
            small: 3,
            fail_code: Code::Aborted as i32,
            ..Default::default()
        })
        .await
        .expect("Stream")
        .into_inner();
    let mut bigs = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(message)) => bigs.push(message.big),
            Ok(None) => panic!("stream ended without the requested failure"),
            Err(status) => break status,
        }
    };
    assert_eq!(bigs, [1, 2, 3]);
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "stream failed");

    assert_eq!(server.calls.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn reflection_and_health_on_every_server() {
    let shop = start_shop().await;
    let echo = echo::start().await;
    let servers = [
        (shop.catalog, shop::catalog::SERVICE),
        (shop.reviews, shop::reviews::SERVICE),
        (shop.inventory, shop::inventory::SERVICE),
        (shop.orders, shop::orders::SERVICE),
        (shop.chat, shop::chat::SERVICE),
        (echo.addr, echo::SERVICE),
    ];
    for (addr, service) in servers {
        let channel = channel(addr).await;
        let v1 = list_services_v1(channel.clone()).await;
        assert!(v1.iter().any(|s| s == service), "{service} not in {v1:?}");
        assert!(v1.iter().any(|s| s == "grpc.health.v1.Health"), "{v1:?}");
        let v1alpha = list_services_v1alpha(channel.clone()).await;
        assert!(
            v1alpha.iter().any(|s| s == service),
            "{service} not in {v1alpha:?}"
        );

        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        for name in ["", service] {
            let response = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: name.into(),
                })
                .await
                .expect("health check")
                .into_inner();
            assert_eq!(
                response.status(),
                tonic_health::pb::health_check_response::ServingStatus::Serving
            );
        }
    }

    // The served descriptors keep custom options: the HTTP rule is in the file's bytes.
    let file = file_containing_symbol(channel(shop.catalog).await, shop::catalog::SERVICE).await;
    let needle = b"/v1/products/{id}";
    assert!(
        file.windows(needle.len()).any(|w| w == needle),
        "google.api.http option dropped"
    );
}

async fn list_services_v1(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("response")
        .expect("one response");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

async fn list_services_v1alpha(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("response")
        .expect("one response");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

/// The raw `FileDescriptorProto` bytes reflection v1 serves for `symbol`.
async fn file_containing_symbol(channel: Channel, symbol: &str) -> Vec<u8> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("response")
        .expect("one response");
    match response.message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => files
            .file_descriptor_proto
            .into_iter()
            .next()
            .expect("a file"),
        other => panic!("unexpected reflection response {other:?}"),
    }
}

/// Polls `condition` for up to a second.
async fn wait_for(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

#[tokio::test]
async fn dropping_the_shop_stops_it() {
    use pb::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
    use pb::shop::catalog::v1::{GetProductRequest, WatchPriceRequest};

    let shop = start_shop().await;
    let addr = shop.catalog;
    let mut client = CatalogServiceClient::new(channel(addr).await);
    let mut stream = client
        .watch_price(WatchPriceRequest {
            id: "1".into(),
            max_updates: 1000,
            interval_ms: 10,
        })
        .await
        .expect("WatchPrice")
        .into_inner();
    stream.message().await.expect("first update");
    drop(shop);

    // Like a crash: the open stream breaks, the old connection answers nothing more and
    // the port refuses new connections.
    let broken = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    })
    .await;
    assert_eq!(broken, Ok(true), "stream survived the shutdown");
    let status = client
        .get_product(GetProductRequest { id: "1".into() })
        .await
        .expect_err("GetProduct after drop");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Cancelled),
        "{status:?}"
    );
    let refused =
        wait_for_async(|| async { tokio::net::TcpStream::connect(addr).await.is_err() }).await;
    assert!(refused, "listener still accepts after drop");
}

async fn wait_for_async<F: Future<Output = bool>>(mut condition: impl FnMut() -> F) -> bool {
    for _ in 0..100 {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
