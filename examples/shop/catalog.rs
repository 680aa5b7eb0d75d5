//! `shop.catalog.v1.CatalogService`: five fixed products, paging, and a price stream that
//! notices when its client goes away.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::Counters;
use super::faults::Faults;
use super::grpc::{error_info, status_with_details};
use super::pb::shop::catalog::v1::catalog_service_server::{CatalogService, CatalogServiceServer};
use super::pb::shop::catalog::v1::{
    GetProductRequest, ListProductsRequest, ListProductsResponse, Money, PriceUpdate, Product,
    WatchPriceRequest,
};

pub const SERVICE: &str = "shop.catalog.v1.CatalogService";

const DEFAULT_PAGE_SIZE: usize = 10;
const DEFAULT_MAX_UPDATES: i64 = 5;
const DEFAULT_INTERVAL_MS: u64 = 100;
/// Each price update moves the price up by this many nanos (0.25 currency units).
const PRICE_STEP_NANOS: i128 = 250_000_000;

/// The catalog service over a fixed product list.
#[derive(Debug)]
pub struct Catalog {
    products: Vec<Product>,
    counters: Arc<Counters>,
    faults: Arc<Faults>,
}

/// A ready-to-serve catalog server.
pub fn server(counters: Arc<Counters>, faults: Arc<Faults>) -> CatalogServiceServer<Catalog> {
    CatalogServiceServer::new(Catalog {
        products: products(),
        counters,
        faults,
    })
}

/// One catalog entry before it becomes a `Product`.
struct Row {
    name: &'static str,
    description: &'static str,
    category: &'static str,
    units: i64,
    nanos: i32,
    tags: &'static [&'static str],
}

const ROWS: [Row; 5] = [
    Row {
        name: "Espresso Machine",
        description: "Dual-boiler espresso machine with a steam wand.",
        category: "kitchen",
        units: 199,
        nanos: 990_000_000,
        tags: &["coffee", "appliance"],
    },
    Row {
        name: "Burr Grinder",
        description: "Conical burr grinder with 40 settings.",
        category: "kitchen",
        units: 89,
        nanos: 500_000_000,
        tags: &["coffee"],
    },
    Row {
        name: "Pour-Over Kettle",
        description: "Gooseneck kettle with temperature control.",
        category: "kitchen",
        units: 45,
        nanos: 0,
        tags: &["coffee", "kettle"],
    },
    Row {
        name: "Trail Running Shoes",
        description: "Lightweight shoes with a grippy sole.",
        category: "outdoor",
        units: 129,
        nanos: 950_000_000,
        tags: &["shoes", "running"],
    },
    Row {
        name: "Camping Lantern",
        description: "Rechargeable LED lantern, 300 lumen.",
        category: "outdoor",
        units: 24,
        nanos: 990_000_000,
        tags: &["camping", "light"],
    },
];

/// Products "1".."5" (SKU-001..SKU-005): three in `kitchen`, two in `outdoor`, all in USD.
pub fn products() -> Vec<Product> {
    ROWS.iter()
        .zip(1_i64..)
        .map(|(row, n)| Product {
            id: n.to_string(),
            sku: format!("SKU-{n:03}"),
            name: row.name.to_owned(),
            description: row.description.to_owned(),
            price: Some(Money {
                currency_code: "USD".to_owned(),
                units: row.units,
                nanos: row.nanos,
            }),
            thumbnail_url: format!("https://img.shop.example/{n}.png"),
            tags: row.tags.iter().map(|t| (*t).to_owned()).collect(),
            category: row.category.to_owned(),
            // 2024-01-0n 00:00:00 UTC: fixed so responses are reproducible.
            created_at: Some(prost_types::Timestamp {
                seconds: 1_704_067_200 + (n - 1) * 86_400,
                nanos: 0,
            }),
        })
        .collect()
}

impl Catalog {
    fn find(&self, id: &str) -> Result<&Product, Status> {
        self.products
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(|| not_found(id))
    }

    fn count(&self) {
        self.counters.catalog.fetch_add(1, Ordering::Relaxed);
    }
}

/// NOT_FOUND with a `google.rpc.ErrorInfo` naming the product, as the gateway's error
/// mapping expects from real backends.
fn not_found(id: &str) -> Status {
    status_with_details(
        Code::NotFound,
        format!("product {id} not found"),
        vec![error_info(
            "PRODUCT_NOT_FOUND",
            "catalog.shop.example",
            &[("id", id)],
        )],
    )
}

/// `price` raised by `steps` price steps.
fn bumped(price: &Money, steps: i64) -> Money {
    let total = i128::from(price.units) * 1_000_000_000
        + i128::from(price.nanos)
        + i128::from(steps) * PRICE_STEP_NANOS;
    Money {
        currency_code: price.currency_code.clone(),
        units: i64::try_from(total / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(total % 1_000_000_000).unwrap_or(0),
    }
}

type PriceStream = Pin<Box<dyn Stream<Item = Result<PriceUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl CatalogService for Catalog {
    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<Product>, Status> {
        self.count();
        self.faults.catalog.apply(&request.get_ref().id).await?;
        let product = self.find(&request.get_ref().id)?;
        Ok(Response::new(product.clone()))
    }

    /// `page_token` is the offset as a decimal string; `next_page_token` is empty on the
    /// last page.
    async fn list_products(
        &self,
        request: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        self.count();
        self.faults.catalog.apply("").await?;
        let request = request.into_inner();
        let page_size = usize::try_from(request.page_size)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_PAGE_SIZE);
        let offset = if request.page_token.is_empty() {
            0
        } else {
            request.page_token.parse::<usize>().map_err(|_| {
                Status::invalid_argument(format!("invalid page_token {:?}", request.page_token))
            })?
        };
        let matching: Vec<&Product> = self
            .products
            .iter()
            .filter(|p| request.category.is_empty() || p.category == request.category)
            .collect();
        let products: Vec<Product> = matching
            .iter()
            .skip(offset)
            .take(page_size)
            .map(|p| (*p).clone())
            .collect();
        let end = offset.saturating_add(page_size);
        let next_page_token = if end < matching.len() {
            end.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(ListProductsResponse {
            products,
            next_page_token,
        }))
    }

    type WatchPriceStream = PriceStream;

    /// Sends the first update at once and the next ones every `interval_ms`. The sender task
    /// waits on `closed()` as well as the timer, so a client that goes away is noticed within
    /// one interval and counted in `watch_cancelled`.
    async fn watch_price(
        &self,
        request: Request<WatchPriceRequest>,
    ) -> Result<Response<Self::WatchPriceStream>, Status> {
        self.count();
        let request = request.into_inner();
        let product = self.find(&request.id)?;
        let base = product.price.clone().unwrap_or_default();
        let max_updates = match request.max_updates {
            n if n > 0 => i64::from(n),
            _ => DEFAULT_MAX_UPDATES,
        };
        let interval = Duration::from_millis(match request.interval_ms {
            n if n > 0 => u64::from(n.unsigned_abs()),
            _ => DEFAULT_INTERVAL_MS,
        });
        let counters = self.counters.clone();
        let id = request.id;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for sequence in 1..=max_updates {
                if sequence > 1 {
                    tokio::select! {
                        () = tx.closed() => {
                            counters.watch_cancelled.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        () = tokio::time::sleep(interval) => {}
                    }
                }
                let update = PriceUpdate {
                    id: id.clone(),
                    price: Some(bumped(&base, sequence - 1)),
                    sequence,
                    at: Some(SystemTime::now().into()),
                };
                if tx.send(Ok(update)).await.is_err() {
                    counters.watch_cancelled.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
