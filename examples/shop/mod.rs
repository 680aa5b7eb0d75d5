//! The demo shop: five small tonic services (catalog, reviews, inventory, orders, chat),
//! each on its own listener with gRPC reflection (v1 and v1alpha) and `grpc.health.v1`, so
//! the gateway can be pointed at them exactly as at real backends.
//!
//! Shared by the `demo_shop` example and the integration tests
//! (`#[path = "../../examples/shop/mod.rs"] mod shop;` from `tests/support/mod.rs`).
#![allow(dead_code)]

pub mod catalog;
pub mod chat;
pub mod faults;
pub mod grpc;
pub mod inventory;
pub mod orders;
pub mod reviews;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

/// Generated messages, clients and servers, nested by proto package.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]

    /// Encoded `FileDescriptorSet` of the shop protos and their imports (custom options kept).
    pub const SHOP_DESCRIPTOR: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/shop_descriptor.bin"));

    pub mod shop {
        pub mod catalog {
            pub mod v1 {
                tonic::include_proto!("shop.catalog.v1");
            }
        }
        pub mod reviews {
            pub mod v1 {
                tonic::include_proto!("shop.reviews.v1");
            }
        }
        pub mod inventory {
            pub mod v1 {
                tonic::include_proto!("shop.inventory.v1");
            }
        }
        pub mod orders {
            pub mod v1 {
                tonic::include_proto!("shop.orders.v1");
            }
        }
        pub mod chat {
            pub mod v1 {
                tonic::include_proto!("shop.chat.v1");
            }
        }
        pub mod shipping {
            pub mod v1 {
                tonic::include_proto!("shop.shipping.v1");
            }
        }
    }

    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

/// Default ports of the demo, in the order of [`start`]'s `ports` argument.
pub const DEFAULT_PORTS: [u16; 5] = [50051, 50052, 50053, 50054, 50055];

/// A running shop. Dropping it stops every server abruptly, like a crash: listeners close
/// and open connections (and their streams) are cut.
#[derive(Debug)]
pub struct Shop {
    pub catalog: SocketAddr,
    pub reviews: SocketAddr,
    pub inventory: SocketAddr,
    pub orders: SocketAddr,
    pub chat: SocketAddr,
    pub counters: Arc<Counters>,
    /// Delays and errors on demand (tests only; off by default).
    pub faults: Arc<faults::Faults>,
    /// Every server waits for this sender to go away.
    _shutdown: watch::Sender<()>,
}

/// Calls received per service (every RPC, streams counted once), so tests can assert
/// whether the gateway reached a backend, retried it or served from cache.
#[derive(Debug, Default)]
pub struct Counters {
    pub catalog: AtomicU64,
    pub reviews: AtomicU64,
    pub inventory: AtomicU64,
    pub orders: AtomicU64,
    pub chat: AtomicU64,
    /// `WatchPrice` streams whose client went away before the last update.
    pub watch_cancelled: AtomicU64,
}

/// Starts the five services on `host`. `ports` is `[catalog, reviews, inventory, orders,
/// chat]`; `None` binds free ports. All listeners are bound before this returns, so the
/// services accept connections immediately.
pub async fn start(host: IpAddr, ports: Option<[u16; 5]>) -> std::io::Result<Shop> {
    let ports = ports.unwrap_or([0; 5]);
    let bind = |port: u16| {
        TcpIncoming::bind(SocketAddr::new(host, port)).map(|i| i.with_nodelay(Some(true)))
    };
    let incoming = [
        bind(ports[0])?,
        bind(ports[1])?,
        bind(ports[2])?,
        bind(ports[3])?,
        bind(ports[4])?,
    ];
    let [catalog, reviews, inventory, orders, chat] = [
        incoming[0].local_addr()?,
        incoming[1].local_addr()?,
        incoming[2].local_addr()?,
        incoming[3].local_addr()?,
        incoming[4].local_addr()?,
    ];

    let counters = Arc::new(Counters::default());
    let faults = Arc::new(faults::Faults::default());
    let (shutdown, stop) = watch::channel(());
    let [catalog_in, reviews_in, inventory_in, orders_in, chat_in] = incoming;
    let services: [(TcpIncoming, Routes, &str); 5] = [
        (
            catalog_in,
            Routes::new(catalog::server(counters.clone(), faults.clone())),
            catalog::SERVICE,
        ),
        (
            reviews_in,
            Routes::new(reviews::server(counters.clone(), faults.clone())),
            reviews::SERVICE,
        ),
        (
            inventory_in,
            Routes::new(inventory::server(counters.clone(), faults.clone())),
            inventory::SERVICE,
        ),
        (
            orders_in,
            Routes::new(orders::server(counters.clone())),
            orders::SERVICE,
        ),
        (
            chat_in,
            Routes::new(chat::server(counters.clone())),
            chat::SERVICE,
        ),
    ];
    for (incoming, routes, name) in services {
        grpc::spawn(incoming, routes, name, pb::SHOP_DESCRIPTOR, stop.clone()).await?;
    }

    Ok(Shop {
        catalog,
        reviews,
        inventory,
        orders,
        chat,
        counters,
        faults,
        _shutdown: shutdown,
    })
}
